import { createHash } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { StatusReport } from '../../src/cache/status.js';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage, type FakeImage } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';
import { sample } from '../support/exposition.js';
import { cacheToken } from '../support/registry-auth.js';

describe('status page and status.json', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function setup(overrides: Record<string, unknown> = {}): Promise<{ upstream: FakeUpstream; cache: TestCache & { opsUrl: string } }> {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    const cache = await startCache({ [upstream.host]: upstream.url }, { metricsListen: '127.0.0.1:0', ...overrides });
    cleanup.push(() => cache.stop());
    return { upstream, cache: cache as TestCache & { opsUrl: string } };
  }

  const status = async (cache: { opsUrl: string }): Promise<StatusReport> => {
    const res = await call(`${cache.opsUrl}/status.json`);
    expect(res.status).toBe(200);
    return JSON.parse(res.body.toString()) as StatusReport;
  };

  /** The status once `ready` holds: request metrics are counted when a response has finished, just after the client has it. */
  const statusWhen = (cache: { opsUrl: string }, ready: (s: StatusReport) => boolean): Promise<StatusReport> =>
    vi.waitFor(
      async () => {
        const s = await status(cache);
        if (!ready(s)) throw new Error(`not yet: ${JSON.stringify(s.cache)}`);
        return s;
      },
      { timeout: 10_000, interval: 20 },
    );

  /**
   * Pulls an image over one keep-alive connection, as containerd does. (A client that closes its connection once it
   * has Content-Length bytes can close it before the server ends the response; Fastify then never runs onResponse,
   * and the answer goes uncounted: 11 to 19 of 360 store hits in a loop with a fresh connection per request.)
   */
  async function pull(cache: TestCache, host: string, repo: string, image: FakeImage, headers: Record<string, string> = {}): Promise<void> {
    const get = async (path: string): Promise<void> => {
      const res = await fetch(`${cache.url}/v2/${repo}/${path}?ns=${host}`, { headers });
      await res.arrayBuffer();
      expect(res.status).toBe(200);
    };
    await get('manifests/v1');
    for (const b of image.blobs) await get(`blobs/${b.digest}`);
    await cache.services.blobs.settle();
  }

  it('answers /status and /status.json on the operations listener only', async () => {
    const { cache } = await setup();
    for (const path of ['/status', '/status.json']) expect((await call(`${cache.url}${path}`)).status).toBe(404);
    const page = await call(`${cache.opsUrl}/status`);
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(page.body.toString()).toContain('<h2>Pulls in progress</h2>');
    const json = await status(cache);
    expect(json.cache).toEqual({ hits: 0, misses: 0, hitRatio: null, bytesServed: {}, bytesFetched: 0, bytesSaved: 0 });
    expect(json.images).toEqual([]);
  });

  it('allows exactly the inline script it serves, and nothing from another origin', async () => {
    const { cache } = await setup();
    const page = await call(`${cache.opsUrl}/status`);
    const csp = String(page.headers['content-security-policy']);
    const scripts = [...page.body.toString().matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1] as string);
    expect(scripts).toHaveLength(1);
    const hash = createHash('sha256').update(scripts[0] as string).digest('base64');
    expect(csp).toContain(`script-src 'sha256-${hash}'`);
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("connect-src 'self'");
    // No URL with a scheme or a protocol-relative one: every link and fetch stays on the listener.
    expect(page.body.toString()).not.toMatch(/(src|href)="(https?:)?\/\//);
  });

  it('reports hits, bytes saved, store usage against both thresholds and the images used, after a pull and a repeat', async () => {
    const { upstream, cache } = await setup({ maxStorageBytes: '10Mi', imageGCHighThresholdPercent: 85, imageGCLowThresholdPercent: 80 });
    const image = makeImage([100_000, 200_000]);
    upstream.push('pub/app', 'v1', image);
    await pull(cache, upstream.host, 'pub/app', image);
    const layers = image.blobs.reduce((n, b) => n + b.bytes.length, 0);
    const answers = image.blobs.length + 1;
    const first = await statusWhen(cache, (s) => s.cache.hits + s.cache.misses === answers);
    expect(first.cache).toMatchObject({ hits: 0, hitRatio: 0, bytesFetched: layers, bytesSaved: 0 });
    expect(first.images).toEqual([
      { names: [`${upstream.host}/pub/app:v1`], digest: image.manifestDigest, sizeBytes: layers + image.manifest.length, complete: true, lastUsed: expect.any(String) },
    ]);
    await pull(cache, upstream.host, 'pub/app', image);
    const second = await statusWhen(cache, (s) => s.cache.hits + s.cache.misses === 2 * answers);
    // The second pull: the manifest tag revalidated, every blob from the store.
    expect(second.cache.hits).toBe(answers);
    expect(second.cache.misses).toBe(answers);
    expect(second.cache.hitRatio).toBe(0.5);
    expect(second.cache.bytesSaved).toBe(layers);
    expect(second.store).toMatchObject({ basis: 'maxStorageBytes', storedBytes: layers + image.manifest.length, capacityBytes: 10 * 1024 * 1024, highPercent: 85, lowPercent: 80 });
    expect(second.store.usedPercent).toBeCloseTo(((layers + image.manifest.length) / (10 * 1024 * 1024)) * 100, 6);
    expect(second.policy).toBe('NeverVerifyPreloadedImages');
    expect(second.verification.policy).toBe('NeverVerifyPreloadedImages');
    const page = (await call(`${cache.opsUrl}/status`)).body.toString();
    expect(page).toContain('50.0%');
    expect(page).toContain(`${upstream.host}/pub/app:v1`);
    expect(page).toContain('high 85%');
    expect(page).toContain('low 80%');

    const metrics = (await call(`${cache.opsUrl}/metrics`)).body.toString();
    expect(sample(metrics, 'registry_cache_store_usage_ratio')).toBeCloseTo((layers + image.manifest.length) / (10 * 1024 * 1024), 9);
    expect(sample(metrics, 'registry_cache_store_capacity_bytes')).toBe(10 * 1024 * 1024);
    expect(sample(metrics, 'registry_cache_store_threshold_ratio', { threshold: 'high' })).toBe(0.85);
    expect(sample(metrics, 'registry_cache_store_threshold_ratio', { threshold: 'low' })).toBe(0.8);
    expect(sample(metrics, 'registry_cache_pull_queue_timeout_seconds')).toBe(60);
    expect(sample(metrics, 'registry_cache_pull_queue_oldest_wait_seconds')).toBe(0);
    expect(sample(metrics, 'registry_cache_http_request_duration_seconds_count', { route: 'blob', method: 'GET' })).toBe(2 * image.blobs.length);
  });

  it('shows a download in progress with bytes so far, size, source and waiting clients, and the pull queued behind it', async () => {
    const { upstream, cache } = await setup({ maxParallelImagePulls: 1, pullQueueTimeout: '1m' });
    const image = makeImage([1_000_000]);
    const other = makeImage([1000]);
    upstream.push('pub/app', 'v1', image);
    upstream.push('pub/other', 'v1', other);
    const layer = image.blobs[1] as { digest: string; bytes: Buffer };
    upstream.fault = (req) => (req.path.endsWith(layer.digest) ? { kind: 'stall', afterBytes: 300_000 } : undefined);
    expect((await call(`${cache.url}/v2/pub/app/manifests/v1?ns=${upstream.host}`)).status).toBe(200);
    const url = `${cache.url}/v2/pub/app/blobs/${layer.digest}?ns=${upstream.host}`;
    const readers = [call(url), call(url)];
    // The queued pull: another image while the only slot is held by the stalled one.
    const queued = call(`${cache.url}/v2/pub/other/manifests/v1?ns=${upstream.host}`);
    const during = await statusWhen(cache, (s) => {
      const fill = s.pulls.fills[0];
      return fill !== undefined && fill.bytes >= 300_000 && fill.readers >= 2 && s.pulls.queued.length >= 1;
    });
    expect(during.pulls.fills).toEqual([
      { image: `${upstream.host}/pub/app`, digest: layer.digest, source: 'upstream', bytes: 300_000, size: 1_000_000, readers: 2, elapsedMs: expect.any(Number) },
    ]);
    expect(during.pulls.limit).toBe(1);
    expect(during.pulls.active).toHaveLength(1);
    // Nothing of pub/other was pulled yet: nobody knows every pod may pull it, so it is not named.
    expect(during.pulls.queued[0]?.images).toEqual([expect.stringMatching(/\/\(private [0-9a-f]{12}\)$/)]);
    const page = (await call(`${cache.opsUrl}/status`)).body.toString();
    expect(page).toContain('<progress value="300000" max="1000000"></progress>');
    expect(page).toContain('<span class="badge upstream">upstream</span>');
    const metrics = (await call(`${cache.opsUrl}/metrics`)).body.toString();
    expect(sample(metrics, 'registry_cache_pull_queue_oldest_wait_seconds')).toBeGreaterThan(0);
    await upstream.stop();
    await Promise.allSettled([...readers, queued]);
  });

  it('names only repositories every pod on the node may pull, and never a credential or its hash', async () => {
    const { upstream, cache } = await setup({ imagePullCredentialsVerificationPolicy: 'AlwaysVerify' });
    upstream.auth = { kind: 'basic', users: { alice: 'alice-secret-pw' }, publicRepos: ['pub/app'] };
    const open = makeImage([1000]);
    const secret = makeImage([1000]);
    upstream.push('pub/app', 'v1', open);
    upstream.push('team/secret-project', 'v1', secret);
    await pull(cache, upstream.host, 'pub/app', open);
    const token = await cacheToken(cache.url, upstream.host, 'team/secret-project', { username: 'alice', password: 'alice-secret-pw' });
    await pull(cache, upstream.host, 'team/secret-project', secret, { authorization: `Bearer ${token}` });
    const hashes = cache.services.records.get(upstream.host, 'team/secret-project', secret.manifestDigest)?.credentialHashes ?? [];
    expect(hashes).toHaveLength(1);
    const json = await status(cache);
    const names = json.images.flatMap((i) => i.names);
    expect(names).toContain(`${upstream.host}/pub/app:v1`);
    expect(names.find((n) => n.includes('(private '))).toMatch(new RegExp(`^${upstream.host.replace(/\./g, '\\.')}/\\(private [0-9a-f]{12}\\)$`));
    expect(json.verification.outcomes).toMatchObject({ verified: expect.any(Number) });
    const page = (await call(`${cache.opsUrl}/status`)).body.toString();
    for (const text of [JSON.stringify(json), page]) {
      for (const leak of ['secret-project', secret.manifestDigest, ...secret.blobs.map((b) => b.digest), 'alice', 'alice-secret-pw', token, ...hashes, ...hashes.map((h) => h.slice(0, 8))]) {
        expect(text).not.toContain(leak);
      }
    }
  });

  it('lists the latest upstream failures by registry, without repositories', async () => {
    const { upstream, cache } = await setup();
    upstream.fault = (req) => (req.path.includes('/manifests/') ? { kind: 'status', status: 503 } : undefined);
    expect((await call(`${cache.url}/v2/pub/broken/manifests/v1?ns=${upstream.host}`)).status).toBeGreaterThanOrEqual(500);
    const json = await status(cache);
    expect(json.upstreamErrors[0]).toEqual({ at: expect.any(String), registry: upstream.host, error: 'HTTP 503 to GET' });
    expect(JSON.stringify(json.upstreamErrors)).not.toContain('pub/broken');
    const page = (await call(`${cache.opsUrl}/status`)).body.toString();
    expect(page).toContain('HTTP 503 to GET');
  });
});
