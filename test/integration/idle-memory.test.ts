import { afterEach, describe, expect, it } from 'vitest';
import { startCacheProcess, type CacheProcess } from '../support/cache-process.js';

/** registry_cache_idle_memory_collections_total from the operations listener (its requests are not work). */
async function collections(opsUrl: string): Promise<number> {
  const text = await (await fetch(`${opsUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('registry_cache_idle_memory_collections_total '));
  return Number(line?.split(' ')[1] ?? Number.NaN);
}

describe('memory given back after a burst (the server process, node --expose-gc)', () => {
  let cache: CacheProcess | undefined;
  afterEach(async () => {
    await cache?.stop();
    cache = undefined;
  });

  it('runs one memory-reducing collection once requests stop, and another after the next burst', async () => {
    cache = await startCacheProcess({ 'registry.test': 'http://127.0.0.1:9' }, ['metricsListen: 127.0.0.1:0'], 'dist/cli.js', { nodeFlags: ['--expose-gc'] });
    const ops = cache.metricsUrl as string;
    expect(ops).toMatch(/^http:/);
    expect(await collections(ops)).toBe(0);
    for (let burst = 1; burst <= 2; burst++) {
      for (let i = 0; i < 20; i++) expect((await fetch(`${cache.url}/v2/`)).status).toBe(401);
      // One second of quiet (and the check's half-second period) later: polled, not slept.
      while ((await collections(ops)) < burst) await new Promise((resolve) => setTimeout(resolve, 100));
      expect(await collections(ops)).toBe(burst);
    }
  }, 20_000);

  it('runs none in a process without --expose-gc', async () => {
    cache = await startCacheProcess({ 'registry.test': 'http://127.0.0.1:9' }, ['metricsListen: 127.0.0.1:0']);
    const ops = cache.metricsUrl as string;
    expect(ops).toMatch(/^http:/);
    for (let i = 0; i < 5; i++) await fetch(`${cache.url}/v2/`);
    expect(await collections(ops)).toBe(0);
  });
});
