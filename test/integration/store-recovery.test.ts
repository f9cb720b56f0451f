import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage, sha256 } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';
import { runCli } from '../support/cli.js';
import { CLEAN_SHUTDOWN_FILE } from '../../src/store/lock.js';

describe('store recovery and the CLI', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  it('keeps the store private to its user: directories 0700 and files 0600, an existing 0755 store tightened', async () => {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    const image = makeImage([4096]);
    upstream.push('app', '1', image);
    const parent = await mkdtemp(join(tmpdir(), 'rc-modes-'));
    cleanup.push(() => rm(parent, { recursive: true, force: true }));
    const modes = async (dir: string): Promise<Map<string, number>> => {
      const out = new Map<string, number>([[dir, (await stat(dir)).mode & 0o777]]);
      for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
        const path = join(entry.parentPath, entry.name);
        out.set(path, (await stat(path)).mode & 0o777);
      }
      return out;
    };
    const fresh = join(parent, 'fresh');
    const existing = join(parent, 'existing');
    await mkdir(existing, { mode: 0o755 });
    await chmod(existing, 0o755);
    for (const storage of [fresh, existing]) {
      const cache = await startCache({ [upstream.host]: upstream.url }, {}, storage);
      cleanup.push(() => cache.stop());
      expect((await call(`${cache.url}/v2/app/manifests/1?ns=${upstream.host}`)).status).toBe(200);
      for (const b of image.blobs) expect(sha256((await call(`${cache.url}/v2/app/blobs/${b.digest}?ns=${upstream.host}`)).body)).toBe(b.digest);
      await cache.services.blobs.settle();
      const seen = await modes(storage);
      // The store, blobs/, tmp/, a blob's fan-out directories, blob and manifest files, the database (and -wal, -shm), the lock, the node secret.
      expect(seen.size).toBeGreaterThan(10);
      for (const [path, mode] of seen) {
        const isDir = (await stat(path)).isDirectory();
        expect({ path, mode: mode.toString(8) }).toEqual({ path, mode: isDir ? '700' : '600' });
      }
    }
  });

  it('removes leftover downloads at start and drops rows whose file vanished', async () => {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    const image = makeImage([4096, 8192]);
    upstream.push('app', '1', image);
    const storage = await mkdtemp(join(tmpdir(), 'rc-recover-'));
    cleanup.push(() => rm(storage, { recursive: true, force: true }));

    const first = await startCache({ [upstream.host]: upstream.url }, {}, storage);
    const [config, layer] = image.blobs as unknown as [{ digest: string }, { digest: string }];
    await call(`${first.url}/v2/app/blobs/${config.digest}?ns=${upstream.host}`);
    await call(`${first.url}/v2/app/blobs/${layer.digest}?ns=${upstream.host}`);
    await first.services.blobs.settle();
    await first.stop({ keepStorage: true });

    // What a crash leaves: no clean-shutdown mark (a clean stop writes one, and the next start then trusts the disk).
    await unlink(join(storage, CLEAN_SHUTDOWN_FILE));
    await writeFile(join(storage, 'tmp', 'half-written'), 'partial');
    await unlink(first.services.store.pathFor(layer.digest));

    const second = await startCache({ [upstream.host]: upstream.url }, {}, storage);
    cleanup.push(() => second.stop());
    expect(await readdir(join(storage, 'tmp'))).toEqual([]);
    expect(second.services.metadata.getBlob(layer.digest)).toBeUndefined();
    expect(second.services.metadata.getBlob(config.digest)).toBeDefined();
    expect(second.logs.find((l) => l.includes('store reconciled'))).toMatch(/"removedTempFiles":1,"droppedRows":1,"strayFiles":0/);
    const res = await call(`${second.url}/v2/app/blobs/${layer.digest}?ns=${upstream.host}`);
    expect(sha256(res.body)).toBe(layer.digest);
    expect(upstream.count('GET', /\/blobs\//)).toBe(3);
  });

  it('after a clean shutdown skips the per-file reconciliation (the mark is taken at start, rewritten at the next clean stop)', async () => {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    const image = makeImage([4096]);
    upstream.push('app', '1', image);
    const storage = await mkdtemp(join(tmpdir(), 'rc-clean-'));
    cleanup.push(() => rm(storage, { recursive: true, force: true }));
    const first = await startCache({ [upstream.host]: upstream.url }, {}, storage);
    const [config] = image.blobs as unknown as [{ digest: string }];
    await call(`${first.url}/v2/app/blobs/${config.digest}?ns=${upstream.host}`);
    await first.services.blobs.settle();
    await first.stop({ keepStorage: true });
    expect(await readdir(storage)).toContain(CLEAN_SHUTDOWN_FILE);

    // A file without a row would be removed by reconciliation; after a clean stop nothing looks at the files.
    const stray = `sha256:${'ab'.repeat(32)}`;
    await mkdir(dirname(first.services.store.pathFor(stray)), { recursive: true });
    await writeFile(first.services.store.pathFor(stray), 'not in the database');
    const second = await startCache({ [upstream.host]: upstream.url }, {}, storage);
    expect(await readdir(storage)).not.toContain(CLEAN_SHUTDOWN_FILE);
    expect(second.logs.find((l) => l.includes('store reconciled'))).toBeUndefined();
    expect(await readFile(first.services.store.pathFor(stray), 'utf8')).toBe('not in the database');
    expect(second.services.metadata.getBlob(config.digest)).toBeDefined();
    // A stop that left no mark (a crash): the next start reconciles and removes the stray file.
    await second.stop({ keepStorage: true });
    await unlink(join(storage, CLEAN_SHUTDOWN_FILE));
    const third = await startCache({ [upstream.host]: upstream.url }, {}, storage);
    cleanup.push(() => third.stop());
    expect(third.logs.find((l) => l.includes('store reconciled'))).toMatch(/"strayFiles":1/);
    await expect(readFile(first.services.store.pathFor(stray))).rejects.toThrow(/ENOENT/);
  });

  it('runs `registry-cache serve --config FILE` and stops with a clear message on a bad key', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rc-cli-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, 'listen: 127.0.0.1:0\nregistries:\n  ghcr.io: { url: "ftp://ghcr.io" }\ndefaultRegistry: ghcr.io\n');
    const failed = await runCli(['serve', '--config', bad]);
    expect(failed.code).toBe(2);
    expect(failed.stderr).toContain('registries.ghcr.io.url');

    const good = join(dir, 'good.yaml');
    await writeFile(good, `listen: 127.0.0.1:0\nstorage: ${join(dir, 'store')}\nlogLevel: info\n`);
    const child = spawn(process.execPath, ['dist/cli.js', 'serve', '--config', good], { stdio: ['ignore', 'pipe', 'pipe'] });
    cleanup.push(async () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    const url = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        const m = /"listen":"([^"]+)"/.exec(out);
        if (m) resolve(`http://${m[1]}`);
      });
      child.on('exit', () => reject(new Error(`exited early: ${out}`)));
    });
    expect((await call(`${url}/healthz`)).status).toBe(200);
    expect((await call(`${url}/readyz`)).status).toBe(200);
    const res = await call(`${url}/v2/`);
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toContain('/auth/token');
    child.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(code).toBe(0);
    expect((await readdir(join(dir, 'store'))).sort()).toEqual(expect.arrayContaining(['blobs', 'registry-cache.db', 'tmp']));
  });
});

