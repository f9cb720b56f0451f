import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { LookupFunction } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { startCache, type TestCache } from '../support/cache-server.js';
import { ConnectProxy } from '../support/connect-proxy.js';
import { FakeUpstream, makeImage, sha256 } from '../support/fake-upstream.js';
import { call, errorCode, errorDetail } from '../support/http-client.js';
import { makeTestPki, type TestPki } from '../support/test-pki.js';

describe('upstream connectivity', () => {
  let pki: TestPki;
  let work: string;
  const image = makeImage([40_000]);
  const cleanup: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    pki = makeTestPki();
    work = await mkdtemp(join(tmpdir(), 'rc-tls-'));
    await writeFile(join(work, 'ca.pem'), pki.caPem);
    await writeFile(join(work, 'client.pem'), pki.clientCertPem);
    await writeFile(join(work, 'client-key.pem'), pki.clientKeyPem);
  });
  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function httpsUpstream(requireClientCert = false): Promise<FakeUpstream> {
    const upstream = await new FakeUpstream().start({
      tls: { key: pki.serverKeyPem, cert: pki.serverCertPem, ...(requireClientCert ? { ca: pki.caPem, requestCert: true, rejectUnauthorized: true } : {}) },
    });
    upstream.push('app', 'v1', image);
    cleanup.push(() => upstream.stop());
    return upstream;
  }

  async function cacheFor(upstream: FakeUpstream, registry: Record<string, unknown>, services: Parameters<typeof startCache>[3] = {}): Promise<TestCache> {
    const cache = await startCache({}, { registries: { [upstream.host]: { url: upstream.url, ...registry } }, defaultRegistry: upstream.host }, undefined, services);
    cleanup.push(() => cache.stop());
    return cache;
  }

  const manifest = (cache: TestCache, upstream: FakeUpstream) => call(`${cache.url}/v2/app/manifests/v1?ns=${upstream.host}`);

  it('trusts an HTTPS upstream only with its CA (file or inline, on top of the system roots), or with insecureSkipVerify said loudly', async () => {
    const upstream = await httpsUpstream();
    const untrusted = await manifest(await cacheFor(upstream, {}), upstream);
    expect(untrusted.status).toBe(502);
    expect(errorCode(untrusted)).toBe('UNAVAILABLE');
    expect(errorDetail(untrusted)).toMatchObject({ class: 'tls-unknown-ca', reason: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' });
    expect((await manifest(await cacheFor(upstream, { ca: join(work, 'ca.pem') }), upstream)).status).toBe(200);
    expect((await manifest(await cacheFor(upstream, { ca: pki.caPem }), upstream)).status).toBe(200);
    const insecure = await cacheFor(upstream, { insecureSkipVerify: true });
    expect((await manifest(insecure, upstream)).status).toBe(200);
    expect(insecure.logs.some((l) => l.includes('TLS VERIFICATION IS OFF') && l.includes('"level":40'))).toBe(true);
  });

  it('presents a client certificate to an upstream that requires mTLS', async () => {
    const upstream = await httpsUpstream(true);
    const withoutCert = await manifest(await cacheFor(upstream, { ca: pki.caPem }), upstream);
    expect(withoutCert.status).toBe(502);
    expect(errorCode(withoutCert)).toBe('UNAVAILABLE');
    expect(errorDetail(withoutCert)).toMatchObject({ class: 'client-cert' });
    const mtls = await cacheFor(upstream, { ca: pki.caPem, clientCert: join(work, 'client.pem'), clientKey: join(work, 'client-key.pem') });
    expect((await manifest(mtls, upstream)).status).toBe(200);
  });

  it('tunnels through an explicit per-registry proxy, sending its credentials to the proxy and never logging them', async () => {
    const upstream = await httpsUpstream();
    const proxy = await new ConnectProxy().start();
    cleanup.push(() => proxy.stop());
    const proxyUrl = proxy.url.replace('http://', 'http://egress-user:proxy-s3cret@');
    const cache = await cacheFor(upstream, { ca: pki.caPem, proxy: proxyUrl });
    expect((await manifest(cache, upstream)).status).toBe(200);
    expect(proxy.tunnels).toEqual([upstream.host]);
    expect(proxy.proxyAuthorizations[0]).toBe(`Basic ${Buffer.from('egress-user:proxy-s3cret').toString('base64')}`);
    expect(cache.logs.join('\n')).not.toContain('proxy-s3cret');
    expect(cache.logs.some((l) => l.includes('registry reached through a proxy') && l.includes(proxy.url))).toBe(true);
  });

  it('uses HTTPS_PROXY from the environment and bypasses it for NO_PROXY hosts', async () => {
    const upstream = await httpsUpstream();
    const proxy = await new ConnectProxy().start();
    cleanup.push(() => proxy.stop());
    const saved = { HTTPS_PROXY: process.env.HTTPS_PROXY, NO_PROXY: process.env.NO_PROXY, no_proxy: process.env.no_proxy };
    cleanup.push(async () => {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    });
    process.env.HTTPS_PROXY = proxy.url;
    delete process.env.NO_PROXY;
    delete process.env.no_proxy;
    expect((await manifest(await cacheFor(upstream, { ca: pki.caPem }), upstream)).status).toBe(200);
    expect(proxy.tunnels).toEqual([upstream.host]);
    process.env.NO_PROXY = '127.0.0.1';
    expect((await manifest(await cacheFor(upstream, { ca: pki.caPem }), upstream)).status).toBe(200);
    expect(proxy.tunnels).toHaveLength(1);
  });

  it('aborts a stalled body after idleTimeout: the client sees an error and nothing is stored', async () => {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    const big = makeImage([500_000]);
    upstream.push('app', 'v1', big);
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'slow', chunkBytes: 100_000, delayMs: 800 } : undefined);
    const cache = await cacheFor(upstream, { idleTimeout: '200ms' });
    const layer = big.blobs[1] as { digest: string; bytes: Buffer };
    const res = await call(`${cache.url}/v2/app/blobs/${layer.digest}?ns=${upstream.host}`);
    expect(res.error).toBeDefined();
    expect(res.body.length).toBeLessThan(layer.bytes.length);
    await cache.services.blobs.settle();
    expect(cache.services.metadata.getBlob(layer.digest)).toBeUndefined();
  });

  it('sends static headers to the registry, reuses connections, and caps sockets per registry', async () => {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    upstream.push('app', 'v1', image);
    const many = makeImage([10_000, 10_000, 10_000, 10_000]);
    upstream.push('many', 'v1', many);
    const cache = await cacheFor(upstream, { headers: { 'X-Tenant': 'blue' }, maxSockets: 1 });
    await manifest(cache, upstream);
    const bodies = await Promise.all(many.blobs.map((b) => call(`${cache.url}/v2/many/blobs/${b.digest}?ns=${upstream.host}`)));
    bodies.forEach((b, i) => expect(sha256(b.body)).toBe(many.blobs[i]?.digest));
    expect(upstream.requests.every((r) => r.headers['x-tenant'] === 'blue')).toBe(true);
    expect(new Set(upstream.requests.map((r) => r.remotePort)).size).toBe(1);
  });

  it("follows Docker Hub's shape: token realm on another host of the same domain gets credentials, the blob CDN never does", async () => {
    const hub = await new FakeUpstream().start();
    const cdn = await new FakeUpstream().start();
    cleanup.push(() => hub.stop());
    cleanup.push(() => cdn.stop());
    const port = hub.host.split(':')[1];
    hub.auth = { kind: 'bearer', users: { robot: 'hub-pw' }, realmOrigin: `http://auth.docker.test:${port}` };
    hub.push('library/busybox', '1.36', image);
    cdn.push('cdn', undefined, image);
    const layer = image.blobs[1] as { digest: string };
    hub.fault = (r) =>
      r.path.includes('/blobs/') && r.method === 'GET' && r.headers.authorization
        ? { kind: 'redirect', to: `http://production.cloudflare.docker-cdn.test:${cdn.host.split(':')[1]}/v2/cdn/blobs/${layer.digest}` }
        : undefined;
    // Names resolve to loopback without DNS; the cache sees real host names.
    const lookup = ((_hostname: string, options: { all?: boolean }, cb: (...args: unknown[]) => void) => {
      if (options?.all) cb(null, [{ address: '127.0.0.1', family: 4 }]);
      else cb(null, '127.0.0.1', 4);
    }) as unknown as LookupFunction;
    const cache = await startCache(
      {},
      // Here every name resolves to loopback, so the CDN is allowlisted as a private CDN would be (the real one is public).
      {
        registries: { 'docker.io': { url: `http://registry-1.docker.test:${port}`, username: 'robot', password: 'hub-pw', redirectAllowlist: ['*.docker-cdn.test'] } },
        defaultRegistry: 'docker.io',
      },
      undefined,
      { dispatcherOptions: { lookup } },
    );
    cleanup.push(() => cache.stop());
    const res = await call(`${cache.url}/v2/busybox/manifests/1.36?ns=docker.io`);
    expect(res.status).toBe(200);
    expect(hub.requests.at(-1)?.headers.host).toBe(`registry-1.docker.test:${port}`);
    expect(hub.tokenRequests[0]?.headers.host).toBe(`auth.docker.test:${port}`);
    expect(hub.tokenRequests[0]?.headers.authorization).toBe(`Basic ${Buffer.from('robot:hub-pw').toString('base64')}`);
    const blob = await call(`${cache.url}/v2/busybox/blobs/${layer.digest}?ns=docker.io`);
    expect(sha256(blob.body)).toBe(layer.digest);
    expect(cdn.requests).toHaveLength(1);
    expect(cdn.requests[0]?.headers.authorization).toBeUndefined();
    expect(cdn.requests[0]?.headers.host).toMatch(/^production\.cloudflare\.docker-cdn\.test:/);
  });

  it('stops at start on bad connectivity settings, naming the key', async () => {
    await writeFile(join(work, 'garbage.pem'), '-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n');
    const key = (registry: Record<string, unknown>): string => {
      try {
        loadConfig({ env: {}, overrides: { registries: { 'r.example': { url: 'https://r.example', ...registry } }, defaultRegistry: 'r.example' } });
      } catch (err) {
        if (err instanceof ConfigError) return err.key;
        throw err;
      }
      return 'accepted';
    };
    expect(key({ ca: join(work, 'missing.pem') })).toBe('registries.r.example.ca');
    expect(key({ ca: join(work, 'garbage.pem') })).toBe('registries.r.example.ca');
    expect(key({ clientCert: join(work, 'client.pem') })).toBe('registries.r.example.clientCert');
    expect(key({ clientCert: join(work, 'client.pem'), clientKey: join(work, 'ca.pem') })).toBe('registries.r.example.clientKey');
    expect(key({ idleTimeout: '-1s' })).toBe('registries.r.example.idleTimeout');
    expect(key({ requestTimeout: 'soon' })).toBe('registries.r.example.requestTimeout');
    expect(key({ proxy: 'socks5://p:1080' })).toBe('registries.r.example.proxy');
    expect(key({ caa: 'x' })).toBe('registries.r.example.caa');
    expect(key({ maxSockets: 0 })).toBe('registries.r.example.maxSockets');
    expect(key({ headers: { Authorization: 'Bearer x' } })).toBe('registries.r.example.headers.Authorization');
    expect(key({ ca: pki.caPem, clientCert: pki.clientCertPem, clientKey: pki.clientKeyPem, insecureSkipVerify: false })).toBe('accepted');
  });
});
