// Bundles the compiled CLI (dist/cli.js, from tsc) into dist/cli.js itself, with the code only some commands load in
// chunks beside it: every command and the server then read a few files instead of resolving ~430 modules one by one
// (typebox alone is ~250), which was most of a CLI command's fixed cost. tsc's modules stay in dist/ for what imports
// them directly (the bench's store writers); everything that runs registry-cache as a process runs the bundle.
import { readFile, rm, writeFile } from 'node:fs/promises';
import { build } from 'esbuild';

/** What the last bundle wrote (chunk names carry hashes): removed first, so old chunks do not pile up in dist/. */
const OUTPUTS = 'dist/bundle-outputs.json';
const previous = await readFile(OUTPUTS, 'utf8').then(JSON.parse, () => []);
await Promise.all(previous.filter((f) => f !== 'dist/cli.js').map((f) => rm(f, { force: true })));

const result = await build({
  entryPoints: {
    cli: 'dist/cli.js',
    // verify's hashing threads load it by its path next to the code that starts them: dist/, like every chunk.
    'small-files': 'dist/lifecycle/small-files.js',
  },
  outdir: 'dist',
  allowOverwrite: true,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node24',
  // Maps to src/ through tsc's own maps (`node --enable-source-maps`); tests read them to see which packages a chunk holds.
  sourcemap: true,
  metafile: true,
  // The native addon loads its .node file from its own package; the Kubernetes client is large and only peer sharing
  // with Kubernetes membership imports it.
  external: ['better-sqlite3', '@kubernetes/client-node'],
  // Bundled CommonJS packages call require(); an ES module has none of its own.
  banner: { js: "import { createRequire as __bundleRequire } from 'node:module'; const require = __bundleRequire(import.meta.url);" },
  logLevel: 'warning',
});
await writeFile(OUTPUTS, JSON.stringify(Object.keys(result.metafile.outputs), null, 1));
