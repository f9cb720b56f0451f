import { readdir, readFile } from 'node:fs/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { startCacheProcess, type CacheProcess } from '../support/cache-process.js';

/** Threads of libuv's pool in a process (they are named `libuv-worker`). */
async function poolThreads(pid: number): Promise<number> {
  let n = 0;
  for (const task of await readdir(`/proc/${pid}/task`)) {
    const name = await readFile(`/proc/${pid}/task/${task}/comm`, 'utf8').catch(() => '');
    if (name.trim() === 'libuv-worker') n++;
  }
  return n;
}

describe('the server process thread pool', () => {
  let cache: CacheProcess | undefined;
  afterEach(async () => {
    await cache?.stop();
    cache = undefined;
  });

  // Commits fsync on the pool; 4 threads let a few of them stall every other file operation of the store.
  it('runs 16 threads unless the operator sets UV_THREADPOOL_SIZE', async () => {
    cache = await startCacheProcess({ 'registry.test': 'http://127.0.0.1:9' });
    // Opening the store used the pool, so it exists by the time the server listens.
    expect(await poolThreads(cache.daemon.child.pid as number)).toBe(16);
    await cache.stop();
    cache = await startCacheProcess({ 'registry.test': 'http://127.0.0.1:9' }, [], 'dist/cli.js', { env: { UV_THREADPOOL_SIZE: '6' } });
    expect(await poolThreads(cache.daemon.child.pid as number)).toBe(6);
  });
});
