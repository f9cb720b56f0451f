/**
 * Access is proven by possession, never by an upstream's word (issue 11: security items 2, 6, 7 and R4; issue 12's
 * "a cold layer costs exactly one upstream request").
 */
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage, sha256, type FakeAuth, type FakeImage } from '../support/fake-upstream.js';
import { call, errorCode, type TestResponse } from '../support/http-client.js';
import { cacheToken } from '../support/registry-auth.js';

const A = { username: 'tenant-a', password: 'pw-of-a-5d1e' };
const B = { username: 'tenant-b', password: 'pw-of-b-0c7a' };
const C = { username: 'tenant-c', password: 'not-a-valid-pw' };
const basic = (u: { username: string; password: string }): Record<string, string> => ({
  authorization: `Basic ${Buffer.from(`${u.username}:${u.password}`).toString('base64')}`,
});

describe('access proven by possession', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function upstreamWith(auth: FakeAuth, images: Record<string, FakeImage> = {}): Promise<FakeUpstream> {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    upstream.auth = auth;
    for (const [repo, image] of Object.entries(images)) upstream.push(repo, 'v1', image);
    return upstream;
  }

  async function cacheFor(upstreams: FakeUpstream[], overrides: Record<string, unknown> = {}): Promise<TestCache> {
    const cache = await startCache(Object.fromEntries(upstreams.map((u) => [u.host, u.url])), overrides);
    cleanup.push(() => cache.stop());
    return cache;
  }

  /** Tenant A pulls the whole private image through the cache, so every piece of it is stored. */
  async function pullAsA(cache: TestCache, upstream: FakeUpstream, image: FakeImage, repo = 'private/app'): Promise<void> {
    const auth = { authorization: `Bearer ${await cacheToken(cache.url, upstream.host, repo, A)}` };
    expect((await call(`${cache.url}/v2/${repo}/manifests/${image.manifestDigest}?ns=${upstream.host}`, { headers: auth })).status).toBe(200);
    for (const b of image.blobs) expect(sha256((await call(`${cache.url}/v2/${repo}/blobs/${b.digest}?ns=${upstream.host}`, { headers: auth })).body)).toBe(b.digest);
    await cache.services.blobs.settle();
    for (const b of image.blobs) expect(cache.services.metadata.getBlob(b.digest)).toBeDefined();
  }

  /** Whether a response handed over any of `secret` (a complete body, or a prefix of it). */
  const leaks = (res: TestResponse, secret: Buffer): boolean => res.body.length > 0 && secret.subarray(0, res.body.length).equals(res.body);

  it("an upstream that answers 200 to every HEAD cannot unlock another registry's stored private manifest or blob", async () => {
    const image = makeImage([3000, 5000]);
    const honest = await upstreamWith({ kind: 'basic', users: { [A.username]: A.password } }, { 'private/app': image });
    const evil = await upstreamWith({ kind: 'none' });
    evil.evil = {};
    const layer = image.blobs[2] as { digest: string; bytes: Buffer };
    // The evil registry also publishes a manifest of its own that lists the private layer.
    const decoy = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(Buffer.from('{}')), size: 2 },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layer.digest, size: layer.bytes.length }],
      }),
    );
    evil.pushManifest('decoy/app', 'v1', decoy, 'application/vnd.oci.image.manifest.v1+json');
    for (const policy of ['NeverVerifyPreloadedImages', 'AlwaysVerify']) {
      const cache = await cacheFor([honest, evil], { imagePullCredentialsVerificationPolicy: policy });
      await pullAsA(cache, honest, image);
      const viaEvil = (path: string): string => `${cache.url}/v2/${path}?ns=${evil.host}`;
      for (const headers of [{}, basic(C), { authorization: `Bearer ${await cacheToken(cache.url, evil.host, 'any/repo')}` }]) {
        for (const method of ['GET', 'HEAD']) {
          const manifest = await call(viaEvil(`any/repo/manifests/${image.manifestDigest}`), { method, headers });
          // The evil registry's own bytes for that digest do not match it: 502 DIGEST_INVALID, never the stored manifest.
          expect(manifest.status, `${policy} ${method} manifest through the evil registry`).toBe(502);
          if (method === 'GET') expect(errorCode(manifest)).toBe('DIGEST_INVALID');
          expect(leaks(manifest, image.manifest)).toBe(false);
        }
        const blob = await call(viaEvil(`any/repo/blobs/${layer.digest}`), { headers });
        expect(leaks(blob, layer.bytes), `${policy}: private layer bytes through the evil registry`).toBe(false);
      }
      // Through its own manifest that lists the private layer.
      expect((await call(viaEvil('decoy/app/manifests/v1'))).status).toBe(200);
      const throughDecoy = await call(viaEvil(`decoy/app/blobs/${layer.digest}`));
      expect(leaks(throughDecoy, layer.bytes), `${policy}: private layer through a decoy manifest`).toBe(false);
      // A tag the evil registry first served with its own manifest, then (HEAD) claims points at the private one.
      evil.evil = { tagDigest: image.manifestDigest };
      const moved = await call(viaEvil('decoy/app/manifests/v1'));
      expect(leaks(moved, image.manifest), `${policy}: private manifest through a moved tag`).toBe(false);
      expect(moved.body.equals(decoy)).toBe(true);
      evil.evil = {};
      await cache.services.blobs.settle();
      for (const repo of ['any/repo', 'decoy/app']) {
        for (const digest of [image.manifestDigest, layer.digest]) expect(cache.services.records.get(evil.host, repo, digest)).toBeUndefined();
      }
      await cache.stop();
      cleanup.pop();
    }
  });

  /** What a client can observe of one answer, with the digest asked for replaced so two digests compare. */
  function observe(res: TestResponse, digest: string, upstreamRequests: number): unknown {
    let body: unknown = res.body.toString('utf8').replaceAll(digest, '<digest>');
    try {
      body = JSON.parse(body as string);
    } catch {
      // not JSON: compare as text
    }
    return {
      status: res.status,
      code: errorCode(res),
      wwwAuthenticate: res.headers['www-authenticate'],
      retryAfter: res.headers['retry-after'],
      contentLength: res.headers['content-length']?.replace(String(res.body.length), '<length of body>'),
      body,
      upstreamRequests,
    };
  }

  describe.each<[string, FakeAuth]>([
    ['refuses with 401', { kind: 'basic', users: { [A.username]: A.password } }],
    ['refuses with 404 (anonymous tokens, GHCR-like)', { kind: 'bearer', users: { [A.username]: A.password }, privateRepos: ['private/app'] }],
    ['refuses wrong credentials with 404', { kind: 'basic', users: { [A.username]: A.password }, hideUnauthorized: true }],
  ])('an upstream that %s', (_name, auth) => {
    it('a client without access cannot tell a stored private digest from an unknown one', async () => {
      const image = makeImage([3000, 5000]);
      const upstream = await upstreamWith(auth, { 'private/app': image });
      const cache = await cacheFor([upstream]);
      await pullAsA(cache, upstream, image);
      const layer = image.blobs[1] as { digest: string };
      const anonymousToken = `Bearer ${await cacheToken(cache.url, upstream.host, 'private/app')}`;
      const clients: Record<string, Record<string, string>> = { 'no credentials': {}, 'anonymous token': { authorization: anonymousToken }, 'wrong credential': basic(C) };

      async function answers(manifestDigest: string, blobDigest: string): Promise<Record<string, unknown>> {
        const seen: Record<string, unknown> = {};
        for (const [client, headers] of Object.entries(clients)) {
          for (const [kind, digest] of [['manifests', manifestDigest], ['blobs', blobDigest]] as const) {
            for (const method of ['GET', 'HEAD', 'GET']) {
              const before = upstream.requests.length;
              const res = await call(`${cache.url}/v2/private/app/${kind}/${digest}?ns=${upstream.host}`, { method, headers });
              await cache.services.blobs.settle();
              const key = `${client} ${method} ${kind} #${Object.keys(seen).filter((k) => k.startsWith(`${client} ${method} ${kind}`)).length + 1}`;
              seen[key] = observe(res, digest, upstream.requests.length - before);
            }
          }
        }
        return seen;
      }

      // Upstream tokens are cached per credential: a first round warms them, so both rounds below start alike.
      await answers(sha256(randomBytes(64)), sha256(randomBytes(64)));
      const stored = await answers(image.manifestDigest, layer.digest);
      const unknown = await answers(sha256(randomBytes(64)), sha256(randomBytes(64)));
      expect(stored).toEqual(unknown);
      // Nothing was handed over, and somebody asked the upstream each time a back-off did not answer.
      for (const answer of Object.values(stored) as { status: number }[]) expect(answer.status).not.toBe(200);
    });
  });

  it("a refused wrong credential does not make a valid tenant's next request hit back-off", async () => {
    const image = makeImage([3000, 5000]);
    const upstream = await upstreamWith({ kind: 'basic', users: { [A.username]: A.password, [B.username]: B.password }, hideUnauthorized: true }, { 'private/app': image });
    const cache = await cacheFor([upstream]);
    const layer = image.blobs[1] as { digest: string; bytes: Buffer };
    const urls = [`manifests/v1`, `manifests/${image.manifestDigest}`, `blobs/${layer.digest}`].map((p) => `${cache.url}/v2/private/app/${p}?ns=${upstream.host}`);
    for (const url of urls) {
      expect((await call(url, { headers: basic(C) })).status).toBe(404);
      const again = await call(url, { headers: basic(C) });
      expect(again.status).toBe(404);
      expect(again.headers['retry-after'], 'the refused client backs off').toBe('10');
    }
    for (const url of urls) {
      const tenant = await call(url, { headers: basic(A) });
      expect(tenant.status, `tenant A on ${url}`).toBe(200);
      expect(tenant.headers['retry-after']).toBeUndefined();
    }
    await cache.services.blobs.settle();
    // An outage does not depend on the credential: one client's failure backs off everyone, without asking again.
    const fresh = makeImage([100]);
    upstream.push('private/app', 'v2', fresh);
    upstream.fault = () => ({ kind: 'status', status: 500 });
    const url = `${cache.url}/v2/private/app/manifests/v2?ns=${upstream.host}`;
    expect((await call(url, { headers: basic(B) })).status).toBe(502);
    const before = upstream.requests.length;
    const tenant = await call(url, { headers: basic(A) });
    expect(tenant.status).toBe(502);
    expect(tenant.headers['retry-after']).toBe('10');
    expect(upstream.requests.length).toBe(before);
  });

  describe.each<[string, Record<string, unknown>, boolean]>([
    ['one credential under AlwaysVerify', { imagePullCredentialsVerificationPolicy: 'AlwaysVerify' }, true],
    ['anonymous clients of a public image', {}, false],
  ])('eight concurrent cold GETs of one layer, %s', (_name, overrides, withCredential) => {
    it('make one upstream GET and no HEAD, and failing HEADs fail nobody', async () => {
      const image = makeImage([3000, 400_000]);
      const upstream = await upstreamWith({ kind: 'basic', users: { [A.username]: A.password }, publicRepos: ['public/app'] }, { 'private/app': image, 'public/app': image });
      const repo = withCredential ? 'private/app' : 'public/app';
      const cache = await cacheFor([upstream], overrides);
      const headers: Record<string, string> = withCredential ? { authorization: `Bearer ${await cacheToken(cache.url, upstream.host, repo, A)}` } : {};
      expect((await call(`${cache.url}/v2/${repo}/manifests/${image.manifestDigest}?ns=${upstream.host}`, { headers })).status).toBe(200);
      const layer = image.blobs[2] as { digest: string };
      upstream.fault = (r) =>
        r.method === 'HEAD' ? { kind: 'status', status: 503 } : r.path.includes('/blobs/') ? { kind: 'slow', chunkBytes: 50_000, delayMs: 20 } : undefined;
      const before = upstream.requests.length;
      const all = await Promise.all(Array.from({ length: 8 }, () => call(`${cache.url}/v2/${repo}/blobs/${layer.digest}?ns=${upstream.host}`, { headers })));
      for (const res of all) {
        expect(res.status).toBe(200);
        expect(sha256(res.body)).toBe(layer.digest);
      }
      const made = upstream.requests.slice(before).map((r) => `${r.method} ${r.path}`);
      expect(made).toEqual([`GET /v2/${repo}/blobs/${layer.digest}`]);
    });
  });

  it('a cold layer under AlwaysVerify costs exactly one upstream request, the GET', async () => {
    const image = makeImage([3000, 5000]);
    const upstream = await upstreamWith({ kind: 'basic', users: { [A.username]: A.password } }, { 'private/app': image });
    const cache = await cacheFor([upstream], { imagePullCredentialsVerificationPolicy: 'AlwaysVerify' });
    const auth = { authorization: `Bearer ${await cacheToken(cache.url, upstream.host, 'private/app', A)}` };
    expect((await call(`${cache.url}/v2/private/app/manifests/${image.manifestDigest}?ns=${upstream.host}`, { headers: auth })).status).toBe(200);
    for (const b of image.blobs) {
      const before = upstream.requests.length;
      const res = await call(`${cache.url}/v2/private/app/blobs/${b.digest}?ns=${upstream.host}`, { headers: auth });
      expect(sha256(res.body)).toBe(b.digest);
      expect(upstream.requests.slice(before).map((r) => `${r.method} ${r.path}`)).toEqual([`GET /v2/private/app/blobs/${b.digest}`]);
    }
  });

  it("joining a running fill shares its proof only with the same credential: others are checked by their own upstream GET", async () => {
    const image = makeImage([3000, 400_000]);
    const upstream = await upstreamWith({ kind: 'basic', users: { [A.username]: A.password, [B.username]: B.password } }, { 'private/app': image });
    const cache = await cacheFor([upstream]);
    const layer = image.blobs[2] as { digest: string; bytes: Buffer };
    const url = `${cache.url}/v2/private/app/blobs/${layer.digest}?ns=${upstream.host}`;
    upstream.fault = (r) => (r.method === 'GET' && r.path.includes('/blobs/') ? { kind: 'slow', chunkBytes: 50_000, delayMs: 20 } : undefined);
    const tenant = call(url, { headers: basic(A) });
    await new Promise<void>((resolve) => {
      const wait = (): void => (cache.services.blobs.activeFills > 0 ? resolve() : void setTimeout(wait, 2));
      wait();
    });
    const [anonymous, wrong, other] = await Promise.all([call(url), call(url, { headers: basic(C) }), call(url, { headers: basic(B) })]);
    expect(sha256((await tenant).body)).toBe(layer.digest);
    expect(anonymous.status).toBe(401);
    expect(wrong.status).toBe(401);
    expect(leaks(anonymous, layer.bytes) || leaks(wrong, layer.bytes)).toBe(false);
    expect(sha256(other.body)).toBe(layer.digest);
    // A's own GET, B's own GET, and the refused ones (anonymous, then C's): nobody rode on A's answer.
    const gets = upstream.requests.filter((r) => r.method === 'GET' && r.path.includes('/blobs/'));
    expect(gets.filter((r) => r.status === 200)).toHaveLength(2);
    expect(upstream.count('HEAD', /./)).toBe(0);
  });
});
