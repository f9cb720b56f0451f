import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { INITIAL_BACKOFF_MS } from '../../src/limiter/backoff.js';
import { startCache, type TestCache } from '../support/cache-server.js';
import { controlDate } from '../support/clock.js';
import { FakeUpstream, makeImage, sha256 } from '../support/fake-upstream.js';
import { call, errorCode } from '../support/http-client.js';

const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

describe('manifests through the cache', () => {
  let upstream: FakeUpstream;
  let cache: TestCache;
  const image = makeImage([1000, 2000]);
  let base: string;

  async function startWith(overrides: Record<string, unknown> = {}): Promise<void> {
    cache = await startCache({ [upstream.host]: upstream.url }, overrides);
    base = `${cache.url}/v2/team/app/manifests`;
  }

  beforeEach(async () => {
    upstream = await new FakeUpstream().start();
    upstream.push('team/app', '1.0', image);
  });

  afterEach(async () => {
    vi.useRealTimers();
    await cache?.stop();
    await upstream.stop();
  });

  it('serves a tag and its digest with exact bytes and headers, fetching once', async () => {
    await startWith();
    const byTag = await call(`${base}/1.0?ns=${upstream.host}`);
    expect(byTag.status).toBe(200);
    expect(byTag.body.equals(image.manifest)).toBe(true);
    expect(byTag.headers['content-type']).toBe(OCI_MANIFEST);
    expect(byTag.headers['content-length']).toBe(String(image.manifest.length));
    expect(byTag.headers['docker-content-digest']).toBe(image.manifestDigest);
    const byDigest = await call(`${base}/${image.manifestDigest}?ns=${upstream.host}`);
    expect(byDigest.body.equals(image.manifest)).toBe(true);
    const head = await call(`${base}/${image.manifestDigest}?ns=${upstream.host}`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers['docker-content-digest']).toBe(image.manifestDigest);
    expect(head.headers['content-length']).toBe(String(image.manifest.length));
    expect(head.body.length).toBe(0);
    expect(upstream.count('GET', /\/manifests\//)).toBe(1);
    expect(upstream.count('HEAD', /\/manifests\//)).toBe(0);
  });

  it('never asks upstream again for a manifest by digest', async () => {
    await startWith();
    for (let i = 0; i < 3; i++) await call(`${base}/${image.manifestDigest}?ns=${upstream.host}`);
    expect(upstream.requests.filter((r) => r.path.includes('/manifests/'))).toHaveLength(1);
  });

  it('revalidates a tag with one HEAD once tagTtl has passed (0s: every time)', async () => {
    await startWith({ tagTtl: '0s' });
    await call(`${base}/1.0?ns=${upstream.host}`);
    const again = await call(`${base}/1.0?ns=${upstream.host}`);
    expect(again.body.equals(image.manifest)).toBe(true);
    expect(upstream.count('GET', /\/manifests\//)).toBe(1);
    expect(upstream.count('HEAD', /\/manifests\/1\.0/)).toBe(1);
  });

  it('trusts a tag answer younger than tagTtl without asking upstream', async () => {
    await startWith({ tagTtl: '1h' });
    await call(`${base}/1.0?ns=${upstream.host}`);
    await call(`${base}/1.0?ns=${upstream.host}`);
    expect(upstream.requests.filter((r) => r.path.includes('/manifests/'))).toHaveLength(1);
  });

  it('follows a moved tag to its new digest', async () => {
    await startWith();
    await call(`${base}/1.0?ns=${upstream.host}`);
    const moved = makeImage([1234]);
    upstream.push('team/app', '1.0', moved);
    const res = await call(`${base}/1.0?ns=${upstream.host}`);
    expect(res.headers['docker-content-digest']).toBe(moved.manifestDigest);
    expect(res.body.equals(moved.manifest)).toBe(true);
  });

  it('shares one upstream HEAD among concurrent revalidations of a tag', async () => {
    await startWith();
    await call(`${base}/1.0?ns=${upstream.host}`);
    // The upstream holds its answer until all 8 requests are inside the cache and the first HEAD has gone out.
    let open = (): void => undefined;
    upstream.gate = new Promise((resolve) => (open = resolve));
    let arrived = 0;
    const allArrived = new Promise<void>((resolve) => {
      cache.app.server.on('request', (req: { url?: string }) => {
        if (req.url?.includes('/manifests/1.0') && ++arrived === 8) resolve();
      });
    });
    const pending = Promise.all(Array.from({ length: 8 }, () => call(`${base}/1.0?ns=${upstream.host}`)));
    await allArrived;
    await vi.waitFor(() => expect(upstream.count('HEAD', /\/manifests\/1\.0/)).toBe(1));
    // Let the handlers that arrived last finish joining the revalidation (no I/O between arrival and joining).
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    open();
    const all = await pending;
    for (const r of all) expect(r.headers['docker-content-digest']).toBe(image.manifestDigest);
    expect(upstream.count('HEAD', /\/manifests\/1\.0/)).toBe(1);
  });

  it('serves the last known digest of a tag when the upstream is down, and logs a warning', async () => {
    controlDate();
    await startWith();
    await call(`${base}/1.0?ns=${upstream.host}`);
    upstream.fault = () => ({ kind: 'status', status: 503 });
    const res = await call(`${base}/1.0?ns=${upstream.host}`);
    expect(res.status).toBe(200);
    expect(res.body.equals(image.manifest)).toBe(true);
    await upstream.stop();
    // The failure started the tag's back-off: the stored answer is served without asking the upstream again.
    const requestsBefore = upstream.requests.length;
    const down = await call(`${base}/1.0?ns=${upstream.host}`);
    expect(down.status).toBe(200);
    expect(down.headers['docker-content-digest']).toBe(image.manifestDigest);
    expect(upstream.requests.length).toBe(requestsBefore);
    expect(cache.logs.filter((l) => l.includes('serving last known digest'))).toHaveLength(1);
    // Once the back-off is over, an unreachable upstream also gets the last known digest, with a warning.
    vi.advanceTimersByTime(INITIAL_BACKOFF_MS);
    const unreachable = await call(`${base}/1.0?ns=${upstream.host}`);
    expect(unreachable.status).toBe(200);
    expect(cache.logs.filter((l) => l.includes('serving last known digest'))).toHaveLength(2);
    const unknown = await call(`${base}/2.0?ns=${upstream.host}`);
    expect(unknown.status).toBe(503);
    expect(errorCode(unknown)).toBe('UNAVAILABLE');
  });

  it('answers 404 MANIFEST_UNKNOWN for a tag the upstream does not have', async () => {
    await startWith();
    const res = await call(`${base}/nope?ns=${upstream.host}`);
    expect(res.status).toBe(404);
    expect(errorCode(res)).toBe('MANIFEST_UNKNOWN');
  });

  it('refuses an upstream manifest whose bytes do not match the requested digest', async () => {
    await startWith();
    const other = makeImage([10]);
    upstream.pushManifest('team/app', undefined, other.manifest, OCI_MANIFEST);
    // Serve other's bytes under image's digest.
    upstream.fault = (r) =>
      r.path.endsWith(image.manifestDigest)
        ? { kind: 'status', status: 200, headers: { 'content-type': OCI_MANIFEST }, body: other.manifest.toString() }
        : undefined;
    const res = await call(`${base}/${image.manifestDigest}?ns=${upstream.host}`);
    expect(res.status).toBe(502);
    expect(errorCode(res)).toBe('DIGEST_INVALID');
    expect(cache.services.metadata.getManifest(image.manifestDigest)).toBeUndefined();
  });

  it('honours repeated Accept headers and asks upstream with the client types when the stored type is not acceptable', async () => {
    await startWith();
    const child = makeImage([500], DOCKER_MANIFEST);
    upstream.push('team/multi', undefined, child);
    const list = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: DOCKER_LIST,
        manifests: [{ mediaType: DOCKER_MANIFEST, digest: child.manifestDigest, size: child.manifest.length, platform: { os: 'linux', architecture: 'amd64' } }],
      }),
    );
    const listDigest = upstream.pushManifest('team/multi', 'latest', list, DOCKER_LIST);
    const url = `${cache.url}/v2/team/multi/manifests/latest?ns=${upstream.host}`;
    const res = await call(url, { headers: { accept: [DOCKER_MANIFEST, DOCKER_LIST, OCI_INDEX] } });
    expect(res.headers['content-type']).toBe(DOCKER_LIST);
    expect(res.headers['docker-content-digest']).toBe(listDigest);
    expect(cache.services.metadata.manifestRefs(listDigest)).toEqual([{ child: child.manifestDigest, kind: 'manifest' }]);
    // A client that only takes single-image manifests: the fake upstream answers the list anyway, which the client did
    // not accept (issue 11: a manifest must be of a media type the request accepted), so there is no manifest for it.
    const onlyImage = await call(url, { headers: { accept: DOCKER_MANIFEST } });
    expect(onlyImage.status).toBe(404);
    expect(errorCode(onlyImage)).toBe('MANIFEST_UNKNOWN');
    const getsWithClientAccept = upstream.requests.filter((r) => r.method === 'GET' && r.headers.accept === DOCKER_MANIFEST);
    expect(getsWithClientAccept).toHaveLength(1);
  });

  it('stores Docker schema2 manifests with their media type and references', async () => {
    await startWith();
    const docker = makeImage([100, 200], DOCKER_MANIFEST);
    upstream.push('team/docker', 'v1', docker);
    const res = await call(`${cache.url}/v2/team/docker/manifests/v1?ns=${upstream.host}`);
    expect(res.headers['content-type']).toBe(DOCKER_MANIFEST);
    expect(sha256(res.body)).toBe(docker.manifestDigest);
    expect(cache.services.metadata.manifestRefs(docker.manifestDigest).map((r) => r.child).sort()).toEqual(docker.blobs.map((b) => b.digest).sort());
  });
});
