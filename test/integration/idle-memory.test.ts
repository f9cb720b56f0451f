import { afterEach, describe, expect, it } from 'vitest';
import { startCacheProcess, type CacheProcess } from '../support/cache-process.js';
import { FakeUpstream, makeImage, sha256 } from '../support/fake-upstream.js';

/** registry_cache_idle_memory_collections_total from the operations listener (its requests are not work). */
async function collections(opsUrl: string): Promise<number> {
  const text = await (await fetch(`${opsUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('registry_cache_idle_memory_collections_total '));
  return Number(line?.split(' ')[1] ?? Number.NaN);
}

describe('memory given back after a burst (the server process, node --expose-gc)', () => {
  let cache: CacheProcess | undefined;
  let upstream: FakeUpstream | undefined;
  afterEach(async () => {
    await cache?.stop();
    await upstream?.stop();
    cache = upstream = undefined;
  });

  // The growth rule and later bursts are the unit tests' (test/unit/lifecycle/idle-memory.test.ts); this is the wiring.
  it('runs one memory-reducing collection once a download burst is over', async () => {
    upstream = await new FakeUpstream().start();
    // An image of one 48 MiB layer: pulling it through the cache is a burst that grows the process (~45 MB measured).
    const image = makeImage([48 * 1024 * 1024]);
    upstream.push('team/app', 'v0', image);
    cache = await startCacheProcess({ [upstream.host]: upstream.url }, ['metricsListen: 127.0.0.1:0', 'imagePullCredentialsVerificationPolicy: NeverVerify'], 'dist/cli.js', {
      nodeFlags: ['--expose-gc'],
    });
    const ops = cache.metricsUrl as string;
    expect(ops).toMatch(/^http:/);
    expect(await collections(ops)).toBe(0);
    const base = `${cache.url}/v2/team/app`;
    expect((await fetch(`${base}/manifests/v0?ns=${upstream.host}`, { headers: { accept: image.mediaType } })).status).toBe(200);
    for (const blob of image.blobs) {
      const res = await fetch(`${base}/blobs/${blob.digest}?ns=${upstream.host}`);
      expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(blob.digest);
    }
    // One second of quiet after the download (and the check's half-second period) later: polled, not slept.
    while ((await collections(ops)) < 1) await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await collections(ops)).toBe(1);
  }, 30_000);

  it('runs none in a process without --expose-gc', async () => {
    cache = await startCacheProcess({ 'registry.test': 'http://127.0.0.1:9' }, ['metricsListen: 127.0.0.1:0']);
    const ops = cache.metricsUrl as string;
    expect(ops).toMatch(/^http:/);
    for (let i = 0; i < 5; i++) await fetch(`${cache.url}/v2/`);
    expect(await collections(ops)).toBe(0);
  });
});
