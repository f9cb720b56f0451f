// Imported first by the CLI: undici 8 needs Node >= 22.19, and undici 7 on Node 20 crashed the
// process when an upstream closed its connections (nodejs/undici#5360). Fail at start, not mid-pull.
const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 19)) {
  process.stderr.write(
    `registry-cache: Node ${process.versions.node} is not supported; run it with Node 24 LTS ` +
      '(`npm install` puts one in node_modules/.bin, which `npm start` uses)\n',
  );
  process.exit(2);
}
export {};
