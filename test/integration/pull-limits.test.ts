import { afterEach, describe, expect, it, vi } from 'vitest';
import { INITIAL_BACKOFF_MS } from '../../src/limiter/backoff.js';
import { startCache, type TestCache } from '../support/cache-server.js';
import { controlDate } from '../support/clock.js';
import { waitUntil } from '../support/daemon.js';
import { FakeUpstream, makeImage, sha256, type FakeImage } from '../support/fake-upstream.js';
import { call, errorCode } from '../support/http-client.js';
import { imageWindows, peakOverlap } from '../support/transfer-windows.js';



describe('parallel-pull limit', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function setup(count: number, overrides: Record<string, unknown>): Promise<{ upstream: FakeUpstream; cache: TestCache; images: FakeImage[] }> {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    const images = Array.from({ length: count }, () => makeImage([120_000, 120_000]));
    images.forEach((image, i) => upstream.push(`img/n${i}`, 'v1', image));
    // Slow bodies make transfers overlap when they are allowed to.
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'slow', chunkBytes: 40_000, delayMs: 15 } : undefined);
    const cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify', ...overrides });
    cleanup.push(() => cache.stop());
    return { upstream, cache, images };
  }

  /** Images the cache has taken in: queued for a slot, or already asking the upstream. */
  function seen(cache: TestCache, upstream: FakeUpstream): number {
    const asked = new Set(upstream.requests.map((r) => /^\/v2\/(img\/n\d+)\//.exec(r.path)?.[1]).filter((name) => name !== undefined));
    return cache.services.pulls.limiter.queued + asked.size;
  }

  /** What containerd does for one image: the manifest by tag, then every blob in parallel. */
  async function pullImage(cache: TestCache, upstream: FakeUpstream, repo: string, image: FakeImage): Promise<void> {
    const m = await call(`${cache.url}/v2/${repo}/manifests/v1?ns=${upstream.host}`);
    expect(m.status).toBe(200);
    const bodies = await Promise.all(image.blobs.map((b) => call(`${cache.url}/v2/${repo}/blobs/${b.digest}?ns=${upstream.host}`)));
    bodies.forEach((res, i) => expect(sha256(res.body)).toBe(image.blobs[i]?.digest));
  }

  it('with limit n and m > n cold images at once: never more than n images transferring, all complete, in FIFO order', async () => {
    const { upstream, cache, images } = await setup(5, { maxParallelImagePulls: 2, metricsListen: '127.0.0.1:0' });
    const pulls: Promise<void>[] = [];
    for (let i = 0; i < images.length; i++) {
      pulls.push(pullImage(cache, upstream, `img/n${i}`, images[i] as FakeImage));
      // A defined arrival order: the next pull starts once the cache has taken this one in.
      await waitUntil(`pull ${i} arrived`, async () => seen(cache, upstream) > i, { intervalMs: 1 });
    }
    await Promise.all(pulls);
    const windows = imageWindows(upstream.requests);
    expect(windows.size).toBe(5);
    expect(peakOverlap(windows.values())).toBe(2);
    const admissionOrder = [...windows.entries()].sort((a, b) => a[1].start - b[1].start).map(([repo]) => repo);
    expect(admissionOrder).toEqual(['img/n0', 'img/n1', 'img/n2', 'img/n3', 'img/n4']);
    const state = (await call(`${cache.opsUrl}/debug/pulls`)).body.toString();
    expect(JSON.parse(state)).toMatchObject({ limit: 2, queued: [], waits: { count: 5 } });
  });

  it('transfers the layers of one image in parallel within its single slot (serializeImagePulls)', async () => {
    const { upstream, cache, images } = await setup(2, { serializeImagePulls: true });
    const first = pullImage(cache, upstream, 'img/n0', images[0] as FakeImage);
    await waitUntil('the first pull reached the upstream', async () => seen(cache, upstream) > 0, { intervalMs: 1 });
    await Promise.all([first, pullImage(cache, upstream, 'img/n1', images[1] as FakeImage)]);
    const blobs = upstream.requests.filter((r) => r.path.startsWith('/v2/img/n0/blobs/'));
    expect(blobs).toHaveLength(3);
    expect(peakOverlap(blobs.map((r) => ({ start: r.startedAt, end: r.endedAt ?? Number.POSITIVE_INFINITY })))).toBeGreaterThanOrEqual(2);
    expect(peakOverlap(imageWindows(upstream.requests).values())).toBe(1);
  });

  it('serves cache hits at once while the queue is full, and answers 429 with Retry-After after the queue timeout', async () => {
    const { upstream, cache, images } = await setup(3, { serializeImagePulls: true, pullQueueTimeout: '300ms' });
    await pullImage(cache, upstream, 'img/n0', images[0] as FakeImage);
    // n0 is stored and has let go of the only slot (at once when complete, else after pullLinger).
    await cache.services.blobs.settle();
    await waitUntil('n0 let go of the slot', async () => cache.services.pulls.limiter.state().active.length === 0, { intervalMs: 2 });
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'slow', chunkBytes: 10_000, delayMs: 60 } : undefined);
    const slowImage = images[1] as FakeImage;
    const holder = call(`${cache.url}/v2/img/n1/blobs/${slowImage.blobs[1]?.digest}?ns=${upstream.host}`);
    await waitUntil('n1 holds the slot', async () => upstream.requests.some((r) => r.path.startsWith('/v2/img/n1/blobs/')), { intervalMs: 2 });
    const waiter = call(`${cache.url}/v2/img/n2/manifests/v1?ns=${upstream.host}`);
    await waitUntil('n2 is queued', async () => cache.services.pulls.limiter.queued === 1, { intervalMs: 2 });
    const hit = await call(`${cache.url}/v2/img/n0/blobs/${images[0]?.blobs[1]?.digest}?ns=${upstream.host}`);
    expect(hit.status).toBe(200);
    expect(cache.services.pulls.limiter.queued).toBe(1);
    const refused = await waiter;
    expect(refused.status).toBe(429);
    expect(errorCode(refused)).toBe('TOOMANYREQUESTS');
    expect(refused.headers['retry-after']).toBe('10');
    expect(upstream.requests.some((r) => r.path.startsWith('/v2/img/n2/'))).toBe(false);
    expect(sha256((await holder).body)).toBe(slowImage.blobs[1]?.digest);
  });
});

describe('pull back-off', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('answers from the negative cache during back-off, serves stored content as usual, and resets on success', async () => {
    const upstream = await new FakeUpstream().start();
    const image = makeImage([1000]);
    upstream.push('app', 'v1', image);
    controlDate();
    const cache = await startCache({ [upstream.host]: upstream.url });
    try {
      const missing = `${cache.url}/v2/app/manifests/nope?ns=${upstream.host}`;
      const first = await call(missing);
      expect(first.status).toBe(404);
      const second = await call(missing);
      expect(second.status).toBe(404);
      expect(errorCode(second)).toBe('MANIFEST_UNKNOWN');
      expect(second.headers['retry-after']).toBe('10');
      expect(upstream.requests.filter((r) => r.path.endsWith('/nope'))).toHaveLength(1);

      // A stored tag keeps being served while its revalidation backs off after an upstream 503.
      expect((await call(`${cache.url}/v2/app/manifests/v1?ns=${upstream.host}`)).status).toBe(200);
      upstream.fault = () => ({ kind: 'status', status: 503 });
      const before = upstream.requests.length;
      for (let i = 0; i < 3; i++) expect((await call(`${cache.url}/v2/app/manifests/v1?ns=${upstream.host}`)).status).toBe(200);
      expect(upstream.requests.length).toBe(before + 1);
      // Once the upstream is back and the back-off is over, it is asked again.
      upstream.fault = () => undefined;
      vi.advanceTimersByTime(INITIAL_BACKOFF_MS);
      expect((await call(`${cache.url}/v2/app/manifests/v1?ns=${upstream.host}`)).status).toBe(200);
      expect(upstream.requests.length).toBe(before + 2);
      // Success resets: the next failure backs off for 10 s again, not 20 s.
      upstream.fault = () => ({ kind: 'status', status: 503 });
      expect((await call(`${cache.url}/v2/app/manifests/v1?ns=${upstream.host}`)).status).toBe(200);
      expect(upstream.requests.length).toBe(before + 3);
      vi.advanceTimersByTime(INITIAL_BACKOFF_MS);
      expect((await call(`${cache.url}/v2/app/manifests/v1?ns=${upstream.host}`)).status).toBe(200);
      expect(upstream.requests.length).toBe(before + 4);
    } finally {
      await cache.stop();
      await upstream.stop();
    }
  });
});

describe('upstream failover', () => {
  it('moves to the next endpoint when one refuses connections, times out, answers 5xx, or a mirror answers 404', async () => {
    const second = await new FakeUpstream().start();
    const origin = await new FakeUpstream().start();
    const image = makeImage([5000]);
    second.push('app', 'v1', image);
    origin.push('app', 'v1', image);
    origin.push('only/origin', 'v1', image);
    const cache = await startCache(
      {},
      {
        registries: { 'registry.test': { url: origin.url, mirrors: ['http://127.0.0.1:9', second.url] } },
        defaultRegistry: 'registry.test',
        upstreamHeadersTimeout: '300ms',
      },
    );
    try {
      const res = await call(`${cache.url}/v2/app/manifests/v1?ns=registry.test`);
      expect(res.status).toBe(200);
      expect(second.requests).toHaveLength(1);
      expect(origin.requests).toHaveLength(0);
      // A mirror without the image: falls through to the origin.
      expect((await call(`${cache.url}/v2/only/origin/manifests/v1?ns=registry.test`)).status).toBe(200);
      expect(origin.requests.map((r) => r.path)).toEqual(['/v2/only/origin/manifests/v1']);
      // A hung mirror: the headers timeout moves on.
      second.fault = () => ({ kind: 'hang' });
      const blob = await call(`${cache.url}/v2/app/blobs/${image.blobs[1]?.digest}?ns=registry.test`);
      expect(sha256(blob.body)).toBe(image.blobs[1]?.digest);
      expect(origin.requests.some((r) => r.path.includes('/blobs/'))).toBe(true);
      // 5xx from a mirror: the next endpoint.
      second.fault = () => ({ kind: 'status', status: 502 });
      expect((await call(`${cache.url}/v2/app/blobs/${image.blobs[0]?.digest}?ns=registry.test`)).status).toBe(200);
    } finally {
      await cache.stop();
      await second.stop();
      await origin.stop();
    }
  });

  it('authenticates per endpoint', async () => {
    const mirror = await new FakeUpstream().start();
    const image = makeImage([100]);
    mirror.push('app', 'v1', image);
    mirror.auth = { kind: 'bearer' };
    const cache = await startCache({}, { registries: { 'registry.test': { url: 'http://127.0.0.1:9', mirrors: [mirror.url] } }, defaultRegistry: 'registry.test' });
    try {
      expect((await call(`${cache.url}/v2/app/manifests/v1?ns=registry.test`)).status).toBe(200);
      expect(mirror.tokenRequests).toHaveLength(1);
    } finally {
      await cache.stop();
      await mirror.stop();
    }
  });
});

describe('bandwidth cap', () => {
  it('paces all upstream transfers to the configured bytes per second', async () => {
    const upstream = await new FakeUpstream().start();
    const image = makeImage([300_000, 300_000]);
    upstream.push('app', 'v1', image);
    const cache = await startCache({ [upstream.host]: upstream.url }, { upstreamBandwidthLimit: 400_000, imagePullCredentialsVerificationPolicy: 'NeverVerify' });
    try {
      const started = performance.now();
      const [a, b] = await Promise.all(image.blobs.slice(1).map((x) => call(`${cache.url}/v2/app/blobs/${x.digest}?ns=${upstream.host}`)));
      const elapsed = performance.now() - started;
      expect(sha256(a?.body ?? Buffer.alloc(0))).toBe(image.blobs[1]?.digest);
      expect(sha256(b?.body ?? Buffer.alloc(0))).toBe(image.blobs[2]?.digest);
      // 600 KB through a 400 KB/s bucket with one second of burst needs at least ~0.5 s: a lower bound, not a timing target.
      expect(elapsed).toBeGreaterThanOrEqual(400);
    } finally {
      await cache.stop();
      await upstream.stop();
    }
  });
});
