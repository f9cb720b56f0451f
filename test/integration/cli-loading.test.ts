import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
import { makeTempDir, removeTempDir } from '../support/temp-dir.js';

/**
 * A module hook (`node --import`) that writes the packages a process loaded (one name per line) to the file named
 * by its query string, at exit. Sync hooks see ESM imports and CommonJS requires alike: a package loaded from
 * node_modules counts, and so does every package whose code a loaded file of the bundle (dist/*.js) holds, read from
 * that file's source map.
 */
function packageRecorder(outFile: string): string {
  const source = `
    import { registerHooks } from 'node:module';
    import { readFileSync, writeFileSync } from 'node:fs';
    import { fileURLToPath } from 'node:url';
    const packages = new Set();
    const pkg = /node_modules\\/((?:@[^/]+\\/)?[^/]+)\\//;
    registerHooks({ load(url, context, next) {
      const m = pkg.exec(url);
      if (m) packages.add(m[1]);
      else if (url.startsWith('file:') && url.includes('/dist/')) {
        for (const s of JSON.parse(readFileSync(fileURLToPath(url) + '.map', 'utf8')).sources) {
          const inner = pkg.exec(s);
          if (inner) packages.add(inner[1]);
        }
      }
      return next(url, context);
    } });
    process.on('exit', () => writeFileSync(${JSON.stringify(outFile)}, [...packages].join('\\n')));
  `;
  return `data:text/javascript,${encodeURIComponent(source)}`;
}

/** What only the server (HTTP, upstream, metrics, peers) or another command (preload, check) needs. */
const SERVER_ONLY = ['fastify', 'undici', 'prom-client', '@kubernetes/client-node', 'tar-stream', 'cli-progress'];

describe('maintenance commands load only what they use', () => {
  let dir = '';
  afterEach(async () => {
    await removeTempDir(dir);
  });

  it('records, verify and gc (dry or not) load no HTTP server, HTTP client, metrics, Kubernetes or import code', async () => {
    dir = await makeTempDir('rc-cli-loading-');
    const configFile = join(dir, 'config.yaml');
    await writeFile(configFile, `storage: ${join(dir, 'store')}\nregistries:\n  "reg.test": { url: "http://127.0.0.1:9" }\ndefaultRegistry: reg.test\n`);
    for (const args of [['records'], ['verify'], ['gc', '--dry-run'], ['gc']]) {
      const out = join(dir, `${args.join('-')}.txt`);
      const r = await runCli([...args, '--config', configFile], { nodeArgs: ['--import', packageRecorder(out)] });
      expect(r.stderr, args.join(' ')).toBe('');
      expect(r.code, args.join(' ')).toBe(0);
      const loaded = (await readFile(out, 'utf8')).split('\n');
      // The recorder works: the command's own dependencies show up.
      expect(loaded, args.join(' ')).toEqual(expect.arrayContaining(['commander', 'better-sqlite3']));
      expect(loaded.filter((p) => SERVER_ONLY.includes(p)), args.join(' ')).toEqual([]);
    }
  });
});
