import type { LookupFunction } from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage, sha256 } from '../support/fake-upstream.js';
import { call, errorCode } from '../support/http-client.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

/** Every name resolves to loopback without DNS: a "public" name that resolves to 127.0.0.1 is loopback. */
const loopbackLookup = ((_hostname: string, options: { all?: boolean }, cb: (...args: unknown[]) => void) => {
  if (options?.all) cb(null, [{ address: '127.0.0.1', family: 4 }]);
  else cb(null, '127.0.0.1', 4);
}) as unknown as LookupFunction;

describe('an evil upstream: redirects and bodies that are not manifests', () => {
  let evil: FakeUpstream;
  /** A service on the node's loopback the upstream must not make the cache read (a metadata endpoint, an admin API). */
  let internal: FakeUpstream;
  let cache: TestCache | undefined;
  const image = makeImage([30_000]);
  const layer = image.blobs[1] as { digest: string; bytes: Buffer };
  const secret = JSON.stringify({ schemaVersion: 2, secret: 'internal-metadata-credentials' });

  beforeEach(async () => {
    evil = await new FakeUpstream().start();
    internal = await new FakeUpstream().start();
    evil.push('app', 'v1', image);
    internal.fault = () => ({ kind: 'status', status: 200, headers: { 'content-type': OCI_MANIFEST }, body: secret });
  });

  afterEach(async () => {
    await cache?.stop();
    cache = undefined;
    await evil.stop();
    await internal.stop();
  });

  /** The registry is configured by name (`registry.evil.test`), so 127.0.0.1 is not its own host. */
  async function start(registry: Record<string, unknown> = {}): Promise<TestCache> {
    const port = evil.host.split(':')[1];
    cache = await startCache(
      {},
      { registries: { 'evil.test': { url: `http://registry.evil.test:${port}`, ...registry } }, defaultRegistry: 'evil.test' },
      undefined,
      { dispatcherOptions: { lookup: loopbackLookup } },
    );
    return cache;
  }

  it.each([
    ['a loopback IP', (p: string) => `http://127.0.0.1:${p}/x`],
    ['another loopback IP', (p: string) => `http://127.1.2.3:${p}/x`],
    ['IPv6 loopback', (p: string) => `http://[::1]:${p}/x`],
    ['IPv4-mapped IPv6 loopback', (p: string) => `http://[::ffff:127.0.0.1]:${p}/x`],
    ['localhost', (p: string) => `http://localhost:${p}/x`],
    ['a public-looking name that resolves to loopback', (p: string) => `http://assets.internal-cdn.test:${p}/x`],
    ['the link-local metadata service', () => 'http://169.254.169.254/latest/meta-data/iam/'],
    ['a private address', () => 'http://10.255.255.1/x'],
    ['a non-HTTP URL', () => 'file:///etc/passwd'],
  ])('refuses a blob redirect to %s, reading nothing from it', async (_what, target) => {
    const c = await start();
    evil.fault = (r) => (r.path.includes('/blobs/') && r.method === 'GET' ? { kind: 'redirect', to: target(internal.host.split(':')[1] as string) } : undefined);
    const res = await call(`${c.url}/v2/app/blobs/${layer.digest}`);
    expect(res.status).toBe(502);
    expect(errorCode(res)).toBe('UNAVAILABLE');
    expect(res.body.toString()).toContain('redirected to a forbidden address');
    expect(res.body.toString()).not.toContain('internal-metadata');
    expect(internal.requests).toHaveLength(0);
    await c.services.blobs.settle();
    expect(c.services.metadata.getBlob(layer.digest)).toBeUndefined();
  });

  it("refuses a manifest redirect to the node's loopback and stores nothing", async () => {
    const c = await start();
    evil.fault = (r) => (r.path.includes('/manifests/') ? { kind: 'redirect', to: `http://localhost:${internal.host.split(':')[1]}/meta` } : undefined);
    const res = await call(`${c.url}/v2/app/manifests/v1`);
    expect(res.status).toBe(502);
    expect(res.body.toString()).not.toContain('internal-metadata');
    expect(internal.requests).toHaveLength(0);
  });

  it('follows redirects to its own host (another port) and to allowlisted private CDNs', async () => {
    const cdn = await new FakeUpstream().start();
    try {
      const two = makeImage([1000, 2000]);
      evil.push('two', 'v1', two);
      cdn.push('cdn', undefined, two);
      const cdnPort = cdn.host.split(':')[1];
      const c = await start({ redirectAllowlist: ['*.private-cdn.test'] });
      const hosts = ['registry.evil.test', 'blobs.eu.private-cdn.test'];
      for (const [i, host] of hosts.entries()) {
        const blob = two.blobs[i + 1] as { digest: string };
        evil.fault = (r) => (r.path.includes('/blobs/') && r.method === 'GET' ? { kind: 'redirect', to: `http://${host}:${cdnPort}/v2/cdn/blobs/${blob.digest}` } : undefined);
        const res = await call(`${c.url}/v2/two/blobs/${blob.digest}`);
        expect(res.status, host).toBe(200);
        expect(sha256(res.body)).toBe(blob.digest);
      }
      expect(cdn.requests.map((r) => r.headers.host)).toEqual(hosts.map((h) => `${h}:${cdnPort}`));
    } finally {
      await cdn.stop();
    }
  });

  it('refuses JSON that is not a manifest, even when it hashes to the requested digest, and stores nothing', async () => {
    const c = await start();
    const notManifest = Buffer.from(secret);
    const digest = sha256(notManifest);
    evil.pushManifest('app', 'junk', notManifest, OCI_MANIFEST);
    for (const ref of ['junk', digest]) {
      const res = await call(`${c.url}/v2/app/manifests/${ref}`);
      expect(res.status, ref).toBe(502);
      expect(errorCode(res)).toBe('MANIFEST_INVALID');
      expect(res.body.toString()).not.toContain('internal-metadata');
    }
    // An index posing as an image manifest, and a manifest with descriptors that are not descriptors.
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] }));
    evil.pushManifest('app', 'posing', index, OCI_MANIFEST);
    const broken = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { digest: 'x' }, layers: 'none' }));
    evil.pushManifest('app', 'broken', broken, OCI_MANIFEST);
    for (const ref of ['posing', 'broken']) expect(errorCode(await call(`${c.url}/v2/app/manifests/${ref}`)), ref).toBe('MANIFEST_INVALID');
    for (const bytes of [notManifest, index, broken]) expect(c.services.metadata.getManifest(sha256(bytes))).toBeUndefined();
    expect((await call(`${c.url}/v2/app/manifests/v1`)).status).toBe(200);
  });
});
