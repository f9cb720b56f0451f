import { afterEach, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';
import { sample } from '../support/exposition.js';
import { cacheToken } from '../support/registry-auth.js';

describe('operations endpoints', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function setup(overrides: Record<string, unknown> = {}): Promise<{ upstream: FakeUpstream; cache: TestCache }> {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    const cache = await startCache({ [upstream.host]: upstream.url }, overrides);
    cleanup.push(() => cache.stop());
    return { upstream, cache };
  }

  it('exports request, cache, byte, upstream latency, verification and store metrics', async () => {
    const { upstream, cache } = await setup();
    upstream.auth = { kind: 'basic', users: { alice: 'alice-secret-pw' }, publicRepos: ['pub/app'] };
    const image = makeImage([10_000, 20_000]);
    upstream.push('pub/app', 'v1', image);
    upstream.push('priv/app', 'v1', image);
    const layer = image.blobs[2] as { digest: string; bytes: Buffer };
    const blobUrl = `${cache.url}/v2/pub/app/blobs/${layer.digest}?ns=${upstream.host}`;
    await call(`${cache.url}/v2/pub/app/manifests/v1?ns=${upstream.host}`);
    await call(blobUrl);
    await cache.services.blobs.settle();
    await call(blobUrl);
    const token = await cacheToken(cache.url, upstream.host, 'priv/app', { username: 'alice', password: 'alice-secret-pw' });
    await call(`${cache.url}/v2/priv/app/manifests/${image.manifestDigest}?ns=${upstream.host}`, { headers: { authorization: `Bearer ${token}` } });
    await call(`${cache.url}/v2/priv/app/manifests/${image.manifestDigest}?ns=${upstream.host}`);

    const res = await call(`${cache.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toContain('text/plain');
    const text = res.body.toString();
    expect(sample(text, 'registry_cache_http_requests_total', { route: 'blob', method: 'GET', status: '200' })).toBe(2);
    expect(sample(text, 'registry_cache_cache_results_total', { kind: 'blob', result: 'miss' })).toBe(1);
    expect(sample(text, 'registry_cache_cache_results_total', { kind: 'blob', result: 'hit' })).toBe(1);
    // The blob once from disk; the manifest handed to alice by digest is the body of her verification GET (upstream).
    expect(sample(text, 'registry_cache_bytes_served_total', { source: 'store' })).toBe(layer.bytes.length);
    expect(sample(text, 'registry_cache_upstream_bytes_fetched_total', { registry: upstream.host })).toBe(layer.bytes.length);
    expect(sample(text, 'registry_cache_upstream_request_duration_seconds_count', { registry: upstream.host, method: 'GET', status: '200' })).toBeGreaterThanOrEqual(2);
    expect(sample(text, 'registry_cache_credential_verifications_total', { policy: 'NeverVerifyPreloadedImages', result: 'challenged' })).toBe(1);
    expect(sample(text, 'registry_cache_store_size_bytes')).toBeGreaterThanOrEqual(layer.bytes.length);
    expect(sample(text, 'registry_cache_pulls_in_flight')).toBe(0);
    expect(sample(text, 'registry_cache_evictions_total')).toBe(0);
    // Never content or credentials: no repository names, digests or secrets in the exposition.
    for (const leak of ['pub/app', 'priv/app', layer.digest, 'alice-secret-pw', token]) expect(text).not.toContain(leak);
  });

  it('serves probes, and metrics on a separate listener when metricsListen is set', async () => {
    const { cache } = await setup({ metricsListen: '127.0.0.1:0' });
    expect(cache.opsUrl).toBeDefined();
    expect((await call(`${cache.url}/healthz`)).status).toBe(200);
    expect((await call(`${cache.url}/readyz`)).status).toBe(200);
    expect((await call(`${cache.url}/metrics`)).status).toBe(404);
    const ops = await call(`${cache.opsUrl}/metrics`);
    expect(ops.status).toBe(200);
    expect(ops.body.toString()).toContain('registry_cache_http_requests_total');
    expect((await call(`${cache.opsUrl}/readyz`)).status).toBe(200);
  });

  it('serves debug endpoints only on the operations listener, and /metrics on the registry listener only without one', async () => {
    const separate = await setup({ metricsListen: '127.0.0.1:0' });
    expect((await call(`${separate.cache.url}/debug/pulls`)).status).toBe(404);
    expect((await call(`${separate.cache.opsUrl}/debug/pulls`)).status).toBe(200);
    const single = await setup();
    expect(single.cache.opsUrl).toBeUndefined();
    expect((await call(`${single.cache.url}/debug/pulls`)).status).toBe(404);
    expect((await call(`${single.cache.url}/metrics`)).status).toBe(200);
  });

  it('names in /debug/pulls only repositories anyone on the node may pull', async () => {
    const { upstream, cache } = await setup({ metricsListen: '127.0.0.1:0', pullLinger: '1m' });
    upstream.auth = { kind: 'basic', users: { alice: 'alice-secret-pw' }, publicRepos: ['pub/app'] };
    const open = makeImage([1000]);
    const secret = makeImage([1000]);
    upstream.push('pub/app', 'v1', open);
    upstream.push('team/secret-project', 'v1', secret);
    // Both pulls stay in the limiter: their manifests are stored, their layers not yet.
    expect((await call(`${cache.url}/v2/pub/app/manifests/v1?ns=${upstream.host}`)).status).toBe(200);
    const token = await cacheToken(cache.url, upstream.host, 'team/secret-project', { username: 'alice', password: 'alice-secret-pw' });
    expect((await call(`${cache.url}/v2/team/secret-project/manifests/v1?ns=${upstream.host}`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(200);
    const state = (await call(`${cache.opsUrl}/debug/pulls`)).body.toString();
    const parsed = JSON.parse(state) as { active: { keys: string[] }[] };
    expect(parsed.active).toHaveLength(2);
    expect(state).toContain(`${upstream.host}/pub/app`);
    expect(state).not.toContain('secret-project');
    expect(state).not.toContain(secret.manifestDigest);
  });

  it('reports not ready when the database is unusable', async () => {
    const { cache } = await setup();
    cache.services.metadata.close();
    const res = await call(`${cache.url}/readyz`);
    expect(res.status).toBe(503);
    expect((await call(`${cache.url}/healthz`)).status).toBe(200);
  });
});
