import { createHash } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
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

  it("runs verify's hashing threads from the entry next to the bundled code that starts them", async () => {
    // Threads start only on stores of more than a page of rows, which the process tests do not build: a bundle that
    // moved the starting code away from dist/small-files.js would fail only there. The one file that starts them,
    // and a thread started the way it does (its URL, its workerData) that hashes a file.
    const starters: string[] = [];
    for (const f of (await readdir('dist')).filter((n) => n.endsWith('.js'))) {
      if ((await readFile(join('dist', f), 'utf8')).includes('new Worker(url, { workerData: HASH_THREAD })')) starters.push(f);
    }
    expect(starters).toHaveLength(1);
    const url = new URL('./small-files.js', pathToFileURL(resolve('dist', starters[0] ?? '')));
    dir = await makeTempDir('rc-cli-thread-');
    const file = join(dir, 'blob');
    await writeFile(file, 'hello');
    const thread = new Worker(url, { workerData: 'registry-cache:small-file-hasher' });
    try {
      const answer = new Promise((resolve, reject) => {
        thread.once('message', resolve);
        thread.once('error', reject);
      });
      thread.postMessage([{ path: file, algorithm: 'sha256', size: 5 }]);
      expect(await answer).toEqual([{ size: 5, digest: `sha256:${createHash('sha256').update('hello').digest('hex')}` }]);
    } finally {
      await thread.terminate();
    }
  });
});
