import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createLogger } from '../../src/log.js';
import { openStore } from '../../src/lifecycle/open-store.js';
import { startCache, type TestCache } from '../support/cache-server.js';
import { waitUntil } from '../support/daemon.js';
import { FakeUpstream, makeImage, sha256, type FakeImage } from '../support/fake-upstream.js';
import { call, errorCode } from '../support/http-client.js';
import { imageWindows, peakOverlap } from '../support/transfer-windows.js';

const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';



describe('limiter, shutdown, one-shot commands and memory edge cases', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    vi.useRealTimers();
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function upstreamWith(images: Record<string, FakeImage>): Promise<FakeUpstream> {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    for (const [repo, image] of Object.entries(images)) upstream.push(repo, 'v1', image);
    return upstream;
  }

  it('a one-shot command (records/gc/verify open the store) run next to a live server does not destroy its download in flight', async () => {
    const image = makeImage([2_000_000]);
    const upstream = await upstreamWith({ 'app/live': image });
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'slow', chunkBytes: 100_000, delayMs: 20 } : undefined);
    const cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify' });
    cleanup.push(() => cache.stop());
    const layer = image.blobs[1] as { digest: string };
    const download = call(`${cache.url}/v2/app/live/blobs/${layer.digest}?ns=${upstream.host}`);
    // In flight: the fill is writing its temp file, which a recovering open would delete.
    await waitUntil('the download is in flight', async () => (await readdir(join(cache.storage, 'tmp'))).length > 0, { intervalMs: 5 });
    // What `registry-cache records` (or gc, verify, preload) does first, e.g. from `kubectl exec` into the pod.
    const opened = await openStore(cache.services.config, createLogger('silent'));
    opened.metadata.close();
    const res = await download;
    await cache.services.blobs.settle();
    expect(res.error).toBeUndefined();
    expect(sha256(res.body)).toBe(layer.digest);
    expect(cache.services.metadata.getBlob(layer.digest)).toBeDefined();
  });

  it('an image published as an index keeps one slot from its index to its last layer (serializeImagePulls: images never overlap)', async () => {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    // Manifests and blobs each take a little while, as over a real network.
    upstream.delayMs = 40;
    const images: FakeImage[] = [];
    for (let i = 0; i < 2; i++) {
      const image = makeImage([50_000, 50_000]);
      upstream.push(`multi/n${i}`, undefined, image);
      const index = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: OCI_INDEX,
          manifests: [{ mediaType: OCI_MANIFEST, digest: image.manifestDigest, size: image.manifest.length, platform: { os: 'linux', architecture: 'amd64' } }],
        }),
      );
      upstream.pushManifest(`multi/n${i}`, 'v1', index, OCI_INDEX);
      images.push(image);
    }
    const cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify', serializeImagePulls: true });
    cleanup.push(() => cache.stop());
    const accept = { accept: `${OCI_INDEX}, ${OCI_MANIFEST}` };
    // What containerd does: the tag (an index), the platform's manifest by digest, then the layers in parallel.
    const pull = async (i: number): Promise<void> => {
      const image = images[i] as FakeImage;
      expect((await call(`${cache.url}/v2/multi/n${i}/manifests/v1?ns=${upstream.host}`, { headers: accept })).status).toBe(200);
      expect((await call(`${cache.url}/v2/multi/n${i}/manifests/${image.manifestDigest}?ns=${upstream.host}`, { headers: accept })).status).toBe(200);
      const bodies = await Promise.all(image.blobs.map((b) => call(`${cache.url}/v2/multi/n${i}/blobs/${b.digest}?ns=${upstream.host}`)));
      bodies.forEach((res, j) => expect(sha256(res.body)).toBe(image.blobs[j]?.digest));
    };
    // A defined arrival order: n1 starts once n0's first request has reached the upstream.
    const first = pull(0);
    await waitUntil('the first pull reached the upstream', async () => upstream.requests.some((r) => r.path.startsWith('/v2/multi/n0/')), { intervalMs: 1 });
    await Promise.all([first, pull(1)]);
    const windows = imageWindows(upstream.requests);
    expect(windows.size).toBe(2);
    expect(peakOverlap(windows.values())).toBe(1);
  });

  it('lets go of the upstream response when the fill fails before streaming starts (temp file cannot be created)', async () => {
    const image = makeImage([24_000_000]);
    const upstream = await upstreamWith({ 'app/big': image });
    const cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify' });
    cleanup.push(() => cache.stop());
    const store = cache.services.store;
    const original = store.createTemp.bind(store);
    let failures = 1;
    store.createTemp = async () => {
      if (failures-- > 0) throw Object.assign(new Error('EMFILE: too many open files'), { code: 'EMFILE' });
      return original();
    };
    const layer = image.blobs[1] as { digest: string };
    const res = await call(`${cache.url}/v2/app/big/blobs/${layer.digest}?ns=${upstream.host}`);
    // A local failure (the temp file), not the upstream's: 500 UNKNOWN.
    expect(res.status).toBe(500);
    expect(errorCode(res)).toBe('UNKNOWN');
    const upstreamGet = upstream.requests.find((r) => r.method === 'GET' && r.path.endsWith(layer.digest));
    expect(upstreamGet).toBeDefined();
    // The upstream connection must have been released (body destroyed) within a second, not held open with 24 MB unread.
    await waitUntil('the upstream response was released', async () => upstreamGet?.endedAt !== undefined, { timeoutMs: 1000, intervalMs: 5 });
  });

  it('shutdown does not wait for a fill still queued for a pull slot (the shutdown abort reaches queued fills)', async () => {
    const a = makeImage([10_000]);
    const b = makeImage([10_000]);
    const upstream = await upstreamWith({ 'app/a': a, 'app/b': b });
    const cache = await startCache(
      { [upstream.host]: upstream.url },
      { imagePullCredentialsVerificationPolicy: 'NeverVerify', serializeImagePulls: true, pullLinger: '8s', shutdownTimeout: '100ms' },
    );
    let stopped = false;
    cleanup.push(async () => {
      if (!stopped) await cache.stop();
    });
    // Image a's manifest holds the only slot; its layers have not been asked for yet (lingering).
    expect((await call(`${cache.url}/v2/app/a/manifests/v1?ns=${upstream.host}`)).status).toBe(200);
    const queued = call(`${cache.url}/v2/app/b/blobs/${b.blobs[1]?.digest}?ns=${upstream.host}`).catch(() => undefined);
    await waitUntil('the fill is queued', async () => cache.services.pulls.limiter.queued === 1, { intervalMs: 5 });
    const started = performance.now();
    await cache.stop();
    stopped = true;
    await queued;
    expect(performance.now() - started).toBeLessThan(2000);
  });

  it('shutdown does not close the database under a manifest fetch still in flight', async () => {
    const image = makeImage([1000]);
    const upstream = await upstreamWith({ 'app/m': image });
    upstream.delayMs = 400;
    const cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify', shutdownTimeout: '50ms' });
    cleanup.push(() => rm(cache.storage, { recursive: true, force: true }));
    const request = call(`${cache.url}/v2/app/m/manifests/v1?ns=${upstream.host}`).catch(() => undefined);
    await waitUntil('the manifest fetch reached the upstream', async () => upstream.count('GET', /\/manifests\//) === 1, { intervalMs: 5 });
    await cache.stop({ keepStorage: true });
    await request;
    // The request handler has ended (its last log line), so any write it made after the upstream answer is logged.
    await waitUntil('the manifest request ended', async () => cache.logs.some((l) => /"msg":"request( failed)?"/.test(l)), { intervalMs: 5 });
    expect(cache.logs.filter((l) => /database connection is not open/i.test(l))).toEqual([]);
  });

  it('shutdown stays within shutdownTimeout when a manifest request hangs upstream (manifest fetches get the shutdown abort too)', async () => {
    const image = makeImage([1000]);
    const upstream = await upstreamWith({ 'app/h': image });
    upstream.fault = (r) => (r.path.includes('/manifests/') ? { kind: 'hang' } : undefined);
    const cache = await startCache(
      { [upstream.host]: upstream.url },
      { imagePullCredentialsVerificationPolicy: 'NeverVerify', shutdownTimeout: '100ms', upstreamHeadersTimeout: '6s' },
    );
    cleanup.push(() => rm(cache.storage, { recursive: true, force: true }));
    const request = call(`${cache.url}/v2/app/h/manifests/v1?ns=${upstream.host}`).catch(() => undefined);
    await waitUntil('the manifest request hangs upstream', async () => upstream.count('GET', /\/manifests\//) === 1, { intervalMs: 5 });
    const started = performance.now();
    await cache.stop({ keepStorage: true });
    await request;
    expect(performance.now() - started).toBeLessThan(2000);
  });

  it('drops expired upstream Bearer tokens instead of keeping one per (endpoint, repository, credential) forever', async () => {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    upstream.auth = { kind: 'bearer', expiresIn: 60 };
    const cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify' });
    cleanup.push(() => cache.stop());
    // Anyone may ask for any repository name; each gets its own scope and token.
    for (let i = 0; i < 20; i++) await call(`${cache.url}/v2/random/r${i}/manifests/v1?ns=${upstream.host}`);
    const tokens = (cache.services.upstream as unknown as { tokens: { tokens: Map<string, unknown> } }).tokens.tokens;
    expect(tokens.size).toBe(20);
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(Date.now() + 2 * 3600_000);
    await call(`${cache.url}/v2/random/last/manifests/v1?ns=${upstream.host}`);
    // Every one of the first 20 expired an hour and more ago.
    expect(tokens.size).toBeLessThanOrEqual(1);
  });

  it("one client's Accept-specific 404 for a tag does not make the stored tag answer 404 for every other client", async () => {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    const image = makeImage([1000]);
    upstream.push('app/oci', undefined, image);
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ mediaType: OCI_MANIFEST, digest: image.manifestDigest, size: image.manifest.length, platform: { os: 'linux', architecture: 'amd64' } }] }));
    upstream.pushManifest('app/oci', 'v1', index, OCI_INDEX);
    // Docker Hub's answer to a client that cannot take an OCI index: 404 MANIFEST_UNKNOWN.
    upstream.fault = (r) =>
      r.method === 'GET' && r.path.endsWith('/manifests/v1') && !String(r.headers.accept ?? '').includes(OCI_INDEX)
        ? { kind: 'status', status: 404, body: JSON.stringify({ errors: [{ code: 'MANIFEST_UNKNOWN', message: 'OCI index found, but accept header does not support OCI indexes' }] }) }
        : undefined;
    const cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify' });
    cleanup.push(() => cache.stop());
    const tag = `${cache.url}/v2/app/oci/manifests/v1?ns=${upstream.host}`;
    const modern = { accept: `${OCI_INDEX}, ${OCI_MANIFEST}` };
    expect((await call(tag, { headers: modern })).status).toBe(200);
    // An old client that only takes Docker schema 2.
    expect((await call(tag, { headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json' } })).status).toBe(404);
    // containerd again: the tag is stored and the upstream still serves it.
    expect((await call(tag, { headers: modern })).status).toBe(200);
  });

  it("idleTimeout: 0s either is refused at start or means no idle limit (undici's meaning), not 'abort every transfer'", async () => {
    const image = makeImage([300_000]);
    const upstream = await upstreamWith({ 'app/z': image });
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'slow', chunkBytes: 50_000, delayMs: 10 } : undefined);
    let cache: TestCache;
    try {
      cache = await startCache({}, { registries: { [upstream.host]: { url: upstream.url, idleTimeout: '0s' } }, defaultRegistry: upstream.host, imagePullCredentialsVerificationPolicy: 'NeverVerify' });
    } catch {
      return; // refused at start: fine
    }
    cleanup.push(() => cache.stop());
    const layer = image.blobs[1] as { digest: string };
    const res = await call(`${cache.url}/v2/app/z/blobs/${layer.digest}?ns=${upstream.host}`);
    expect(res.status).toBe(200);
    expect(sha256(res.body)).toBe(layer.digest);
  });
});
