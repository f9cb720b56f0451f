import { afterEach, describe, expect, it, vi } from 'vitest';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage, sha256, type FakeImage } from '../support/fake-upstream.js';
import { call, errorCode } from '../support/http-client.js';

const KB = 1000;

describe('pull-through services', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function setup(images: Record<string, FakeImage>, overrides: Record<string, unknown> = {}): Promise<{ upstream: FakeUpstream; cache: TestCache }> {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    for (const [repo, image] of Object.entries(images)) upstream.push(repo, 'v1', image);
    const cache = await startCache({ [upstream.host]: upstream.url }, overrides);
    cleanup.push(() => cache.stop());
    return { upstream, cache };
  }

  async function pull(cache: TestCache, upstream: FakeUpstream, repo: string, image: FakeImage): Promise<void> {
    expect((await call(`${cache.url}/v2/${repo}/manifests/v1?ns=${upstream.host}`)).status).toBe(200);
    for (const b of image.blobs) expect(sha256((await call(`${cache.url}/v2/${repo}/blobs/${b.digest}?ns=${upstream.host}`)).body)).toBe(b.digest);
    await cache.services.blobs.settle();
    await new Promise((r) => setImmediate(r));
    await cache.services.evictor.idle();
  }

  it('counts a revalidated tag as a use of its image: eviction takes the image nobody pulled since', async () => {
    const images = { 'app/one': makeImage([30 * KB]), 'app/two': makeImage([30 * KB]), 'app/three': makeImage([30 * KB]) };
    const { upstream, cache } = await setup(images, { tagTtl: '0s', maxStorageBytes: 100 * KB, imageGCHighThresholdPercent: 85, imageGCLowThresholdPercent: 65, gcInterval: '1h' });
    await pull(cache, upstream, 'app/one', images['app/one']);
    await pull(cache, upstream, 'app/two', images['app/two']);
    // app/one again by tag: the tag is revalidated upstream (a HEAD naming the stored digest), nothing is downloaded.
    const heads = upstream.count('HEAD', /\/app\/one\/manifests\/v1$/);
    const again = await call(`${cache.url}/v2/app/one/manifests/v1?ns=${upstream.host}`);
    expect(again.status).toBe(200);
    expect(upstream.count('HEAD', /\/app\/one\/manifests\/v1$/)).toBe(heads + 1);
    // ~93 KB: past the high mark (85 KB); one image must go to reach the low mark (65 KB).
    await pull(cache, upstream, 'app/three', images['app/three']);
    const has = (repo: keyof typeof images): boolean => cache.services.metadata.getManifest(images[repo].manifestDigest) !== undefined;
    expect(has('app/one')).toBe(true);
    expect(has('app/two')).toBe(false);
    expect(has('app/three')).toBe(true);
  });

  it('answers 502 UNAVAILABLE, not a credential challenge, when the upstream’s token realm is broken', async () => {
    const image = makeImage([KB]);
    const { upstream, cache } = await setup({ 'team/app': image }, { imagePullCredentialsVerificationPolicy: 'AlwaysVerify' });
    upstream.auth = { kind: 'bearer', allowAnonymous: true, realmOrigin: 'ftp://127.0.0.1:1' };
    for (const url of [`${cache.url}/v2/team/app/manifests/v1?ns=${upstream.host}`, `${cache.url}/v2/team/app/blobs/${image.blobs[0]?.digest}?ns=${upstream.host}`]) {
      const res = await call(url);
      expect(res.status, url).toBe(502);
      expect(errorCode(res)).toBe('UNAVAILABLE');
      expect(res.headers['www-authenticate']).toBeUndefined();
    }
  });

  it('answers 502 UNAVAILABLE, not a 500, when the token realm breaks off its answer', async () => {
    // A realm that promises a token document and closes the connection half-way through it.
    const realm = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' });
      res.write('{"token":"abc');
      setImmediate(() => res.socket?.destroy());
    });
    await new Promise<void>((resolve) => realm.listen(0, '127.0.0.1', resolve));
    cleanup.push(() => new Promise<void>((resolve) => realm.close(() => resolve())));
    const { upstream, cache } = await setup({ 'team/app': makeImage([KB]) });
    upstream.auth = { kind: 'bearer', allowAnonymous: true, realmOrigin: `http://127.0.0.1:${(realm.address() as AddressInfo).port}` };
    const res = await call(`${cache.url}/v2/team/app/manifests/v1?ns=${upstream.host}`);
    expect(res.status).toBe(502);
    expect(errorCode(res)).toBe('UNAVAILABLE');
  });

  it.each(['tags/list', 'referrers'])('stops the upstream %s call when its client goes away', async (kind) => {
    const image = makeImage([KB]);
    const { upstream, cache } = await setup({ 'team/app': image }, { upstreamHeadersTimeout: '60s' });
    upstream.fault = (r) => (r.path.includes(`/${kind.split('/')[0]}`) ? { kind: 'hang' } : undefined);
    const path = kind === 'tags/list' ? '/v2/team/app/tags/list' : `/v2/team/app/referrers/${image.manifestDigest}`;
    const client = new AbortController();
    const pending = request(`${cache.url}${path}?ns=${upstream.host}`, { signal: client.signal }).catch((err: unknown) => err);
    await vi.waitFor(() => expect(upstream.requests.some((r) => r.path.includes(`/${kind.split('/')[0]}`))).toBe(true), { timeout: 10_000 });
    client.abort();
    await pending;
    // The cache's upstream request ends with its client, long before the 60 s header timeout.
    await vi.waitFor(() => expect(upstream.requests.find((r) => r.path.includes(`/${kind.split('/')[0]}`))?.endedAt).toBeDefined(), { timeout: 10_000 });
  });
});
