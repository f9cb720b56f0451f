import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage, sha256 } from '../support/fake-upstream.js';
import { call, errorCode } from '../support/http-client.js';

describe('request validation and upstream selection', () => {
  let upstream: FakeUpstream;
  let other: FakeUpstream;
  let cache: TestCache;
  const image = makeImage([100]);

  beforeEach(async () => {
    upstream = await new FakeUpstream().start();
    other = await new FakeUpstream().start();
    upstream.push('library/busybox', '1.36', image);
    other.push('org/app', '1.0', image);
    // docker.io points at the first fake: the Hub rules (library/ prefix) apply to it.
    cache = await startCache({ 'docker.io': upstream.url, [other.host]: other.url });
  });

  afterEach(async () => {
    await cache.stop();
    await upstream.stop();
    await other.stop();
  });

  it('answers /v2/ with the API version header, challenging clients that sent no credentials', async () => {
    const anonymous = await call(`${cache.url}/v2/`);
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers['www-authenticate']).toBe(`Bearer realm="${cache.url}/auth/token",service="registry-cache"`);
    const basic = { authorization: `Basic ${Buffer.from('someone:pw').toString('base64')}` };
    for (const path of ['/v2/', '/v2']) {
      const res = await call(`${cache.url}${path}`, { headers: basic });
      expect(res.status).toBe(200);
      expect(res.headers['docker-distribution-api-version']).toBe('registry/2.0');
    }
    const head = await call(`${cache.url}/v2/`, { method: 'HEAD', headers: basic });
    expect(head.status).toBe(200);
    const open = await startCache({ 'docker.io': upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify' });
    try {
      expect((await call(`${open.url}/v2/`)).status).toBe(200);
    } finally {
      await open.stop();
    }
  });

  it('builds the challenge realm from a well-formed Host only: a quoted Host cannot inject a second realm', async () => {
    const port = new URL(cache.url).port;
    const named = await call(`${cache.url}/v2/`, { headers: { host: `localhost:${port}` } });
    expect(named.headers['www-authenticate']).toBe(`Bearer realm="http://localhost:${port}/auth/token",service="registry-cache"`);
    for (const host of [`x",realm="http://attacker.example/`, 'a b', `127.0.0.1:${port}/evil?`, 'x\\y']) {
      const res = await call(`${cache.url}/v2/?ns=docker.io`, { headers: { host } });
      expect(res.status, host).toBe(401);
      const challenge = res.headers['www-authenticate'] as string;
      expect(challenge.match(/realm=/g), host).toHaveLength(1);
      expect(challenge, host).toBe(`Bearer realm="${cache.url}/auth/token?ns=docker.io",service="registry-cache"`);
    }
  });

  it('picks the upstream from ns=, from a registry path prefix, or the default, and adds library/ for Docker Hub', async () => {
    const viaNs = await call(`${cache.url}/v2/busybox/manifests/1.36?ns=docker.io`);
    expect(viaNs.status).toBe(200);
    expect(upstream.requests.at(-1)?.path).toBe('/v2/library/busybox/manifests/1.36');
    const viaDefault = await call(`${cache.url}/v2/library/busybox/manifests/1.36`);
    expect(viaDefault.status).toBe(200);
    const viaPrefix = await call(`${cache.url}/v2/${other.host}/org/app/manifests/1.0`);
    expect(viaPrefix.status).toBe(200);
    expect(other.requests.at(-1)?.path).toBe('/v2/org/app/manifests/1.0');
    const hubPrefix = await call(`${cache.url}/v2/docker.io/busybox/manifests/1.36`);
    expect(hubPrefix.status).toBe(200);
  });

  it('refuses registries that are not configured without any outbound connection', async () => {
    const before = upstream.requests.length + other.requests.length;
    const res = await call(`${cache.url}/v2/foo/manifests/1.0?ns=evil.example.com`);
    expect(res.status).toBe(403);
    expect(errorCode(res)).toBe('DENIED');
    const prefixed = await call(`${cache.url}/v2/127.0.0.1:1/foo/manifests/1.0`);
    expect(prefixed.status).toBe(403);
    expect(upstream.requests.length + other.requests.length).toBe(before);
  });

  it('refuses a host-like first path component that is not configured instead of sending its credentials to the default registry', async () => {
    const basic = { authorization: `Basic ${Buffer.from('tenant:s3cret').toString('base64')}` };
    for (const name of ['ghcr.io/acme/app', 'localhost/app', 'evil.example.com/library/busybox', 'Registry.Example/app']) {
      const res = await call(`${cache.url}/v2/${name}/manifests/latest`, { headers: basic });
      expect(res.status, name).toBe(name.startsWith('Registry.') ? 400 : 403);
      if (res.status === 403) expect(errorCode(res)).toBe('DENIED');
    }
    const token = await call(`${cache.url}/auth/token?scope=repository:ghcr.io/acme/app:pull`, { headers: basic });
    expect(token.status).toBe(403);
    expect(upstream.requests).toHaveLength(0);
    expect(upstream.tokenRequests).toHaveLength(0);
  });

  it.each([
    ['/v2/UPPER/manifests/1.0', 400, 'NAME_INVALID'],
    ['/v2/a..b/manifests/1.0', 400, 'NAME_INVALID'],
    ['/v2/foo/manifests/-bad', 404, 'MANIFEST_UNKNOWN'],
    [`/v2/foo/manifests/${'x'.repeat(129)}`, 404, 'MANIFEST_UNKNOWN'],
    ['/v2/foo/blobs/sha256:1234', 400, 'DIGEST_INVALID'],
    [`/v2/foo/blobs/md5:${'a'.repeat(32)}`, 400, 'DIGEST_INVALID'],
    [`/v2/foo/manifests/sha256:${'A'.repeat(64)}`, 400, 'DIGEST_INVALID'],
    ['/v2/foo/%2e%2e/%2e%2e/etc/passwd/blobs/x', 400, 'NAME_INVALID'],
    ['/v2/foo/unknown/thing', 404, 'NAME_INVALID'],
  ])('rejects %s with %i %s', async (path, status, code) => {
    const res = await call(`${cache.url}${path}`);
    expect(res.status).toBe(status);
    expect(errorCode(res)).toBe(code);
  });

  it('rejects push methods with UNSUPPORTED', async () => {
    for (const [method, path] of [
      ['POST', '/v2/foo/blobs/uploads/'],
      ['PUT', '/v2/foo/manifests/1.0'],
      ['DELETE', `/v2/foo/blobs/sha256:${'a'.repeat(64)}`],
      ['PATCH', '/v2/foo/blobs/uploads/123'],
    ] as const) {
      const res = await call(`${cache.url}${path}`, { method });
      expect(res.status).toBe(405);
      expect(errorCode(res)).toBe('UNSUPPORTED');
    }
  });

  it('proxies tags/list with n and last, pointing the next link at the cache', async () => {
    other.push('org/app', '2.0', image);
    other.push('org/app', '3.0', image);
    const res = await call(`${cache.url}/v2/org/app/tags/list?ns=${other.host}&n=2`);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body.toString())).toEqual({ name: 'org/app', tags: ['1.0', '2.0'] });
    expect(res.headers.link).toBe(`</v2/org/app/tags/list?n=2&last=2.0&ns=${encodeURIComponent(other.host)}>; rel="next"`);
    const next = await call(`${cache.url}/v2/org/app/tags/list?ns=${other.host}&n=2&last=2.0`);
    expect(JSON.parse(next.body.toString()).tags).toEqual(['3.0']);
  });

  it('answers referrers with an empty index when the upstream has no referrers API', async () => {
    const res = await call(`${cache.url}/v2/org/app/referrers/${image.manifestDigest}?ns=${other.host}`);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('application/vnd.oci.image.index.v1+json');
    expect(JSON.parse(res.body.toString())).toEqual({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [] });
  });

  it('proxies referrers when the upstream has them', async () => {
    const index = JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [{ digest: image.manifestDigest }] });
    other.fault = (r) => (r.path.includes('/referrers/') ? { kind: 'status', status: 200, headers: { 'content-type': 'application/vnd.oci.image.index.v1+json' }, body: index } : undefined);
    const res = await call(`${cache.url}/v2/org/app/referrers/${image.manifestDigest}?ns=${other.host}`);
    expect(res.body.toString()).toBe(index);
  });
});

describe('upstream authentication and transport failures', () => {
  let upstream: FakeUpstream;
  let cache: TestCache | undefined;
  const image = makeImage([50_000]);

  beforeEach(async () => {
    upstream = await new FakeUpstream().start();
    upstream.push('team/app', '1.0', image);
  });

  afterEach(async () => {
    await cache?.stop();
    cache = undefined;
    await upstream.stop();
  });

  it('answers an anonymous Bearer challenge and reuses the token for the scope', async () => {
    upstream.auth = { kind: 'bearer' };
    cache = await startCache({ [upstream.host]: upstream.url });
    const m = await call(`${cache.url}/v2/team/app/manifests/1.0?ns=${upstream.host}`);
    expect(m.status).toBe(200);
    for (const b of image.blobs) {
      const res = await call(`${cache.url}/v2/team/app/blobs/${b.digest}?ns=${upstream.host}`);
      expect(sha256(res.body)).toBe(b.digest);
    }
    expect(upstream.tokenRequests).toHaveLength(1);
    expect(upstream.tokenRequests[0]?.query.get('scope')).toBe('repository:team/app:pull');
    expect(upstream.tokenRequests[0]?.query.get('service')).toBe('fake-registry');
    expect(upstream.tokenRequests[0]?.headers.authorization).toBeUndefined();
  });

  it('sends configured credentials to a same-host token realm and not in logs', async () => {
    upstream.auth = { kind: 'bearer', users: { robot: 's3cret-pw' }, allowAnonymous: false };
    cache = await startCache({}, { registries: { [upstream.host]: { url: upstream.url, username: 'robot', password: 's3cret-pw' } }, defaultRegistry: upstream.host });
    const m = await call(`${cache.url}/v2/team/app/manifests/1.0?ns=${upstream.host}`);
    expect(m.status).toBe(200);
    expect(upstream.tokenRequests[0]?.headers.authorization).toBe(`Basic ${Buffer.from('robot:s3cret-pw').toString('base64')}`);
    expect(cache.logs.join('\n')).not.toContain('s3cret-pw');
  });

  it('gives a token realm on another host no credentials', async () => {
    upstream.auth = { kind: 'bearer', realmOrigin: upstream.url.replace('127.0.0.1', 'localhost'), users: { robot: 'pw' } };
    cache = await startCache({}, { registries: { [upstream.host]: { url: upstream.url, username: 'robot', password: 'pw' } }, defaultRegistry: upstream.host });
    const m = await call(`${cache.url}/v2/team/app/manifests/1.0?ns=${upstream.host}`);
    expect(m.status).toBe(200);
    expect(upstream.tokenRequests).toHaveLength(1);
    expect(upstream.tokenRequests[0]?.headers.authorization).toBeUndefined();
  });

  it('gives a token realm on the same IP address but another port no credentials', async () => {
    // Another service on the registry's machine (here a second fake) claims to be the token realm.
    const other = await new FakeUpstream().start();
    try {
      other.auth = { kind: 'bearer', users: {} };
      upstream.auth = { kind: 'bearer', realmOrigin: other.url, users: { robot: 'port-pw' } };
      cache = await startCache({}, { registries: { [upstream.host]: { url: upstream.url, username: 'robot', password: 'port-pw' } }, defaultRegistry: upstream.host });
      await call(`${cache.url}/v2/team/app/manifests/1.0?ns=${upstream.host}`);
      expect(other.tokenRequests).toHaveLength(1);
      expect(other.tokenRequests[0]?.headers.authorization).toBeUndefined();
    } finally {
      await other.stop();
    }
  });

  it('uses Basic credentials when the upstream challenges with Basic', async () => {
    upstream.auth = { kind: 'basic', users: { robot: 'pw' } };
    cache = await startCache({}, { registries: { [upstream.host]: { url: upstream.url, username: 'robot', password: 'pw' } }, defaultRegistry: upstream.host });
    expect((await call(`${cache.url}/v2/team/app/manifests/1.0?ns=${upstream.host}`)).status).toBe(200);
    const anon = await startCache({ [upstream.host]: upstream.url });
    try {
      const res = await call(`${anon.url}/v2/team/app/manifests/1.0?ns=${upstream.host}`);
      expect(res.status).toBe(401);
      expect(errorCode(res)).toBe('UNAUTHORIZED');
    } finally {
      await anon.stop();
    }
  });

  it('follows a redirect to a blob CDN without the Authorization header', async () => {
    const cdn = await new FakeUpstream().start();
    try {
      const layer = image.blobs[1] as { digest: string; bytes: Buffer };
      cdn.push('cdn', undefined, image);
      upstream.auth = { kind: 'basic', users: { robot: 'pw' } };
      upstream.fault = (r) => (r.path.includes('/blobs/') && r.method === 'GET' ? { kind: 'redirect', to: `${cdn.url}/v2/cdn/blobs/${layer.digest}` } : undefined);
      cache = await startCache({}, { registries: { [upstream.host]: { url: upstream.url, username: 'robot', password: 'pw' } }, defaultRegistry: upstream.host });
      const res = await call(`${cache.url}/v2/team/app/blobs/${layer.digest}?ns=${upstream.host}`);
      expect(res.status).toBe(200);
      expect(sha256(res.body)).toBe(layer.digest);
      expect(cdn.requests).toHaveLength(1);
      expect(cdn.requests[0]?.headers.authorization).toBeUndefined();
      expect(upstream.requests.at(-1)?.headers.authorization).toMatch(/^Basic /);
    } finally {
      await cdn.stop();
    }
  });

  it('answers 503 when the upstream refuses connections and 504 when it times out', async () => {
    cache = await startCache({ [upstream.host]: upstream.url, '127.0.0.1:9': 'http://127.0.0.1:9' }, { upstreamHeadersTimeout: '300ms' });
    const refused = await call(`${cache.url}/v2/team/app/manifests/1.0?ns=127.0.0.1:9`);
    expect(refused.status).toBe(503);
    expect(errorCode(refused)).toBe('UNAVAILABLE');
    upstream.fault = () => ({ kind: 'hang' });
    const slow = await call(`${cache.url}/v2/team/app/manifests/1.0?ns=${upstream.host}`);
    expect(slow.status).toBe(504);
    expect(errorCode(slow)).toBe('UNAVAILABLE');
  });
});
