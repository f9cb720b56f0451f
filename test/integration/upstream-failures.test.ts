import { createServer, type AddressInfo, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { ConnectProxy } from '../support/connect-proxy.js';
import { FakeUpstream, makeImage } from '../support/fake-upstream.js';
import { call, errorCode, type TestResponse } from '../support/http-client.js';
import { makeTestPki, type TestPki } from '../support/test-pki.js';

/** The first OCI error of a response body. */
function ociError(res: TestResponse): { code?: string; message: string; detail?: { registry?: string; class?: string; reason?: string } } {
  const body = JSON.parse(res.body.toString('utf8')) as { errors: { code?: string; message: string; detail?: { class?: string; reason?: string } }[] };
  return body.errors[0] as { message: string };
}

describe('upstream connection failures name their cause', () => {
  let pki: TestPki;
  let foreign: TestPki;
  const image = makeImage([1_000]);
  const cleanup: (() => Promise<void>)[] = [];

  beforeAll(() => {
    pki = makeTestPki();
    foreign = makeTestPki('another test CA');
  });
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });
  afterAll(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function httpsUpstream(tls: Record<string, unknown> = {}): Promise<FakeUpstream> {
    const upstream = await new FakeUpstream().start({ tls: { key: pki.serverKeyPem, cert: pki.serverCertPem, ...tls } });
    upstream.push('app', 'v1', image);
    cleanup.push(() => upstream.stop());
    return upstream;
  }

  async function cacheFor(host: string, url: string, registry: Record<string, unknown> = {}): Promise<TestCache> {
    const cache = await startCache({}, { registries: { [host]: { url, ...registry } }, defaultRegistry: host });
    cleanup.push(() => cache.stop());
    return cache;
  }

  /** A TCP server that accepts connections and never says a byte. */
  async function silentServer(): Promise<string> {
    const held = new Set<Socket>();
    const server = createServer((s) => {
      held.add(s);
      s.on('error', () => s.destroy());
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanup.push(async () => {
      for (const s of held) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });
    return `127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  async function closedPort(): Promise<number> {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    return port;
  }

  const manifest = (cache: TestCache, host: string) => call(`${cache.url}/v2/app/manifests/v1?ns=${host}`);

  async function failure(cache: TestCache, host: string, status: number): Promise<{ message: string; class?: string }> {
    const res = await manifest(cache, host);
    expect(res.status).toBe(status);
    expect(errorCode(res)).toBe('UNAVAILABLE');
    const err = ociError(res);
    expect(err.message).toContain(host);
    return { message: err.message, ...(err.detail?.class ? { class: err.detail.class } : {}) };
  }

  it('a proxy answering 407 is "proxy authentication failed" (502), naming the proxy key, never its password', async () => {
    const upstream = await httpsUpstream();
    const proxy = await new ConnectProxy().start();
    cleanup.push(() => proxy.stop());
    proxy.refuse = 407;
    const cache = await cacheFor(upstream.host, upstream.url, { ca: pki.caPem, proxy: proxy.url.replace('http://', 'http://egress-user:wrong-s3cret@') });
    const err = await failure(cache, upstream.host, 502);
    expect(err.message).toMatch(/proxy authentication failed/);
    expect(err.message).toContain(`registries.${upstream.host}.proxy`);
    expect(err.message).toContain(proxy.url);
    expect(err.class).toBe('proxy-auth');
    expect(cache.logs.join('\n')).not.toContain('wrong-s3cret');
    expect(proxy.tunnels).toEqual([upstream.host]);
  });

  it('a proxy answering 403 is "proxy refused the tunnel" (502)', async () => {
    const upstream = await httpsUpstream();
    const proxy = await new ConnectProxy().start();
    cleanup.push(() => proxy.stop());
    proxy.refuse = 403;
    const cache = await cacheFor(upstream.host, upstream.url, { ca: pki.caPem, proxy: proxy.url });
    const err = await failure(cache, upstream.host, 502);
    expect(err.message).toMatch(/proxy refused the tunnel/);
    expect(err.message).toMatch(/403/);
    expect(err.class).toBe('proxy-refused');
  });

  it('a proxy that never answers CONNECT times out after requestTimeout (504), not after minutes', async () => {
    const upstream = await httpsUpstream();
    const proxy = await new ConnectProxy().start();
    cleanup.push(() => proxy.stop());
    proxy.refuse = 'hang';
    const cache = await cacheFor(upstream.host, upstream.url, { ca: pki.caPem, proxy: proxy.url, requestTimeout: '300ms' });
    const err = await failure(cache, upstream.host, 504);
    expect(err.message).toMatch(/timed out/);
    expect(err.class).toBe('timeout');
  });

  it('through a proxy, a registry that never completes the TLS handshake times out after connectTimeout (504)', async () => {
    const host = await silentServer();
    const proxy = await new ConnectProxy().start();
    cleanup.push(() => proxy.stop());
    const cache = await cacheFor(host, `https://${host}`, { proxy: proxy.url, connectTimeout: '300ms' });
    const started = performance.now();
    const err = await failure(cache, host, 504);
    // undici's default for the tunnelled handshake is 10 s; the registry's connectTimeout must bound it.
    expect(performance.now() - started).toBeLessThan(5_000);
    expect(err.message).toBe(`upstream ${host} timed out connecting (through proxy ${proxy.url}) (registries.${host}.connectTimeout)`);
    expect(proxy.tunnels).toEqual([host]);
  });

  it('the egress proxy from HTTPS_PROXY is named as such: 407 is proxy-auth, a silent one times out after requestTimeout', async () => {
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
    proxy.refuse = 407;
    const refused = await failure(await cacheFor(upstream.host, upstream.url, { ca: pki.caPem }), upstream.host, 502);
    expect(refused.message).toBe(
      `proxy authentication failed for upstream ${upstream.host}: the egress proxy from HTTPS_PROXY/HTTP_PROXY answered 407 to CONNECT; check the user and password in HTTPS_PROXY/HTTP_PROXY and NO_PROXY`,
    );
    proxy.refuse = 'hang';
    const silent = await failure(await cacheFor(upstream.host, upstream.url, { ca: pki.caPem, requestTimeout: '300ms' }), upstream.host, 504);
    expect(silent.message).toBe(
      `upstream ${upstream.host} timed out waiting for the response (through the egress proxy from HTTPS_PROXY/HTTP_PROXY) (registries.${upstream.host}.requestTimeout)`,
    );
    expect(proxy.tunnels).toEqual([upstream.host, upstream.host]);
  });

  it('an upstream requiring a client certificate the cache does not present says so (TLS 1.3 alert and TLS 1.2 handshake failure)', async () => {
    // undici 8 reports the TLS 1.3 alert, which follows the handshake, as "other side closed" unless the pool keeps it.
    for (const [maxVersion, alert] of [
      ['TLSv1.3', 'certificate required'],
      ['TLSv1.2', 'handshake failure'],
    ]) {
      const upstream = await httpsUpstream({ ca: pki.caPem, requestCert: true, rejectUnauthorized: true, maxVersion });
      const cache = await cacheFor(upstream.host, upstream.url, { ca: pki.caPem });
      const err = await failure(cache, upstream.host, 502);
      expect(err.message).toContain(`upstream ${upstream.host} requires a client certificate (TLS alert: ${alert})`);
      expect(err.message).toContain(`registries.${upstream.host}.clientCert`);
      expect(err.class).toBe('client-cert');
    }
  });

  it('an upstream that closes the connection on a client certificate it does not trust names the client certificate', async () => {
    for (const maxVersion of ['TLSv1.3', 'TLSv1.2']) {
      const upstream = await httpsUpstream({ ca: pki.caPem, requestCert: true, rejectUnauthorized: true, maxVersion });
      const cache = await cacheFor(upstream.host, upstream.url, { ca: pki.caPem, clientCert: foreign.clientCertPem, clientKey: foreign.clientKeyPem });
      const err = await failure(cache, upstream.host, 502);
      expect(err.message).toMatch(/rejected the client certificate/);
      expect(err.message).toContain(`registries.${upstream.host}.clientCert`);
      expect(err.class).toBe('client-cert');
    }
  });

  it('a server certificate from an unknown CA names the ca key (502), whether or not the chain is sent', async () => {
    for (const cert of [pki.serverCertPem, pki.serverCertPem + pki.caPem]) {
      const upstream = await httpsUpstream({ cert });
      const cache = await cacheFor(upstream.host, upstream.url);
      const err = await failure(cache, upstream.host, 502);
      expect(err.message).toMatch(/TLS verification .* failed: its certificate is issued by an unknown CA/);
      expect(err.message).toContain(`registries.${upstream.host}.ca`);
      expect(err.class).toBe('tls-unknown-ca');
    }
  });

  it('a server certificate for another name is a name mismatch (502)', async () => {
    const upstream = await httpsUpstream({ cert: pki.wrongNameServerCertPem });
    const cache = await cacheFor(upstream.host, upstream.url, { ca: pki.caPem });
    const err = await failure(cache, upstream.host, 502);
    expect(err.message).toMatch(/not valid for the name 127\.0\.0\.1/);
    expect(err.class).toBe('tls-name-mismatch');
  });

  it('an expired server certificate says expired (502)', async () => {
    const upstream = await httpsUpstream({ cert: pki.expiredServerCertPem });
    const cache = await cacheFor(upstream.host, upstream.url, { ca: pki.caPem });
    const err = await failure(cache, upstream.host, 502);
    expect(err.message).toMatch(/certificate has expired/);
    expect(err.class).toBe('tls-expired');
  });

  it('an https:// URL on a plain-HTTP port is a TLS handshake failure that questions the URL (502)', async () => {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    const cache = await cacheFor(upstream.host, `https://${upstream.host}`);
    const err = await failure(cache, upstream.host, 502);
    expect(err.message).toMatch(/^TLS handshake with upstream .* failed/);
    expect(err.message).toContain(`is registries.${upstream.host}.url an https:// URL of a TLS port?`);
    expect(err.class).toBe('tls-handshake');
  });

  it('a refused port is "refused the connection" (503)', async () => {
    const host = `127.0.0.1:${await closedPort()}`;
    const cache = await cacheFor(host, `https://${host}`);
    const err = await failure(cache, host, 503);
    expect(err.message).toMatch(/refused the connection/);
    expect(err.class).toBe('connect-refused');
  });

  it('a proxy that refuses connections is named, not the registry (503)', async () => {
    const upstream = await httpsUpstream();
    const port = await closedPort();
    const cache = await cacheFor(upstream.host, upstream.url, { ca: pki.caPem, proxy: `http://127.0.0.1:${port}` });
    const err = await failure(cache, upstream.host, 503);
    expect(err.message).toMatch(new RegExp(`proxy http://127\\.0\\.0\\.1:${port} refused the connection`));
    expect(err.message).toContain(`registries.${upstream.host}.proxy`);
    expect(err.class).toBe('connect-refused');
  });

  it('a name that does not resolve is a DNS failure (503)', async () => {
    const host = 'no-such-registry.invalid';
    const cache = await cacheFor(host, `https://${host}`);
    const err = await failure(cache, host, 503);
    expect(err.message).toMatch(/does not resolve/);
    expect(err.class).toBe('dns');
  });

  it('a hung server is a timeout (504): no TLS answer within connectTimeout, no HTTP answer within requestTimeout', async () => {
    const host = await silentServer();
    const tlsCache = await cacheFor(host, `https://${host}`, { connectTimeout: '300ms' });
    const connect = await failure(tlsCache, host, 504);
    expect(connect.message).toMatch(/timed out connecting/);
    expect(connect.class).toBe('timeout');
    const httpCache = await cacheFor(host, `http://${host}`, { requestTimeout: '300ms' });
    const headers = await failure(httpCache, host, 504);
    expect(headers.message).toMatch(/timed out waiting for the response/);
    expect(headers.class).toBe('timeout');
  });

  it('logs the class with the low-level code, and counts each upstream attempt in registry_cache_upstream_errors_total{registry,class}', async () => {
    const upstream = await httpsUpstream();
    const proxy = await new ConnectProxy().start();
    cleanup.push(() => proxy.stop());
    proxy.refuse = 407;
    const cache = await cacheFor(upstream.host, upstream.url, { ca: pki.caPem, proxy: proxy.url });
    const first = await failure(cache, upstream.host, 502);
    // The pull back-off answers the repeat with the same cause, without another attempt.
    const repeat = await failure(cache, upstream.host, 502);
    expect(repeat).toEqual(first);
    expect(proxy.tunnels).toHaveLength(1);
    const lines = cache.logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === 'upstream connection failed');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 40, registry: upstream.host, class: 'proxy-auth', code: 'UND_ERR_ABORTED' });
    const metrics = (await call(`${cache.url}/metrics`)).body.toString('utf8');
    expect(metrics).toContain(`registry_cache_upstream_errors_total{registry="${upstream.host}",class="proxy-auth"} 1`);
  });
});
