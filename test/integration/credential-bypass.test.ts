/**
 * Review findings (credential verification). Every test here describes the behaviour the issue / the kubelet
 * semantics require; each one FAILS on the code as reviewed and passes once the finding is fixed.
 */
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { preloadImage } from '../../src/preload/preload.js';
import { startCache, type TestCache } from '../support/cache-server.js';
import { waitUntil } from '../support/daemon.js';
import { FakeUpstream, makeImage, sha256, type FakeImage } from '../support/fake-upstream.js';
import { call, errorCode, type TestResponse } from '../support/http-client.js';
import { writeOciLayout } from '../support/oci-layout.js';
import { cacheToken } from '../support/registry-auth.js';

const A = { username: 'tenant-a', password: 'secret-pw-of-a' };

describe('credential bypass attempts', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function upstreamWith(image: FakeImage, publicRepos: string[] = []): Promise<FakeUpstream> {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    upstream.auth = { kind: 'basic', users: { [A.username]: A.password }, publicRepos };
    upstream.push('private/app', 'v1', image);
    return upstream;
  }

  async function cacheFor(upstream: FakeUpstream, overrides: Record<string, unknown> = {}): Promise<TestCache> {
    const cache = await startCache({ [upstream.host]: upstream.url }, overrides);
    cleanup.push(() => cache.stop());
    return cache;
  }

  async function workDir(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'rc-review-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    return dir;
  }

  /**
   * A kubelet credential provider that is slow (as cloud providers are on a cache miss) for images whose name
   * contains "attacker", fast otherwise, and never has credentials for anything. Not cached (0s). Each call appends
   * the image it was asked about to `calls`, so a test can wait until a request is inside the provider.
   */
  async function slowProvider(work: string, host: string, delayMs: number): Promise<{ config: Record<string, unknown>; calls: string }> {
    const calls = join(work, 'provider-calls');
    const bin = join(work, 'bin');
    await mkdir(bin, { recursive: true });
    const plugin = join(bin, 'slow-provider');
    await writeFile(
      plugin,
      `#!${process.execPath}
const fs = require('node:fs');
const req = JSON.parse(fs.readFileSync(0, 'utf8'));
fs.appendFileSync(${JSON.stringify(calls)}, req.image + '\\n');
const answer = () => process.stdout.write(JSON.stringify({
  apiVersion: 'credentialprovider.kubelet.k8s.io/v1', kind: 'CredentialProviderResponse', cacheKeyType: 'Image', cacheDuration: '0s', auth: {},
}));
if (req.image.includes('attacker')) setTimeout(answer, ${delayMs}); else answer();
`,
    );
    await chmod(plugin, 0o755);
    const providerConfig = join(work, 'providers.yaml');
    await writeFile(
      providerConfig,
      `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: slow-provider
    matchImages: ["${host}"]
    defaultCacheDuration: 0s
    apiVersion: credentialprovider.kubelet.k8s.io/v1
`,
    );
    return { config: { credentialProviderConfig: providerConfig, credentialProviderBinDir: bin }, calls };
  }

  /** An anonymous client that must prove access is asked for credentials: 401 UNAUTHORIZED with a challenge. */
  function expectChallenge(res: TestResponse, what: string): void {
    expect.soft(res.status, what).toBe(401);
    expect.soft(errorCode(res), what).toBe('UNAUTHORIZED');
    expect.soft(res.headers['www-authenticate'], what).toMatch(/^Bearer realm="http:\/\/127\.0\.0\.1:\d+\/auth\/token\?ns=/);
  }

  // ---------------------------------------------------------------------------------------------------------
  // Finding 1 (high): authorizeBlob → BlobCache.get is a check-then-act race. A request for a blob that is
  // unknown at authorization time is waved through ("the upstream fetch will be the verification"), but
  // BlobCache.get later serves whatever is stored or joins whatever fill is running by then, with no check of
  // this client at all; when it joins a fill it even records the client as a puller (nodePodsAccessible).
  // ---------------------------------------------------------------------------------------------------------
  it('an unauthenticated client that asked for a blob just before a tenant fetched it is not handed the tenant\'s private bytes', async () => {
    const image = makeImage([3000, 5000]);
    const upstream = await upstreamWith(image);
    const layer = image.blobs[2] as { digest: string; bytes: Buffer };
    // Tenant A's layer download is slow (a big layer): 5000 bytes at 250 bytes / 100 ms, ~2 s.
    upstream.fault = (r) => (r.method === 'GET' && r.path === `/v2/private/app/blobs/${layer.digest}` ? { kind: 'slow', chunkBytes: 250, delayMs: 100 } : undefined);
    const work = await workDir();
    const provider = await slowProvider(work, upstream.host, 1200);
    const cache = await cacheFor(upstream, provider.config);

    const tokenA = await cacheToken(cache.url, upstream.host, 'private/app', A);
    const auth = { authorization: `Bearer ${tokenA}` };
    expect((await call(`${cache.url}/v2/private/app/manifests/${image.manifestDigest}?ns=${upstream.host}`, { headers: auth })).status).toBe(200);

    // t=0: an attacker with no credentials at all asks for the layer through a repository of its choosing.
    const attackerUrl = `${cache.url}/v2/attacker/repo/blobs/${layer.digest}?ns=${upstream.host}`;
    const attacker = call(attackerUrl);
    await waitUntil('the attacker\'s request is in the credential provider', async () => (await readFile(provider.calls, 'utf8')).includes('attacker/repo'), { intervalMs: 5 });
    // While the provider works on it: tenant A pulls its layer (authorized: A pulled the manifest that references it).
    const tenant = await call(`${cache.url}/v2/private/app/blobs/${layer.digest}?ns=${upstream.host}`, { headers: auth });
    expect(tenant.status).toBe(200);
    const stolen = await attacker;
    await cache.services.blobs.settle();

    // The upstream would never give the attacker this blob (not in attacker/repo, and no credentials).
    expectChallenge(stolen, 'private layer handed to an unauthenticated client');
    expect.soft(stolen.body.equals(layer.bytes), 'the bytes are the private layer').toBe(false);
    // And nothing may have been recorded for it: a later plain request must not be served from the store.
    expect.soft(cache.services.records.get(upstream.host, 'attacker/repo', layer.digest)?.nodePodsAccessible ?? false, 'attacker recorded nodePodsAccessible').toBe(false);
    const before = upstream.requests.length;
    const again = await call(attackerUrl);
    expectChallenge(again, 'later plain anonymous request served');
    expect.soft(upstream.requests.length, 'the cache must at least ask the upstream').toBeGreaterThan(before);
  }, 20_000);

  // ---------------------------------------------------------------------------------------------------------
  // Finding 2 (medium): blob fills are shared by digest whatever the starter's credentials or repository. A fill
  // started by a client that cannot get the blob (anonymous, wrong repository) is joined by an authorized
  // tenant, who then gets the starter's failure (404 here, 401 with a refused credential).
  // ---------------------------------------------------------------------------------------------------------
  it('an anonymous request through another repository cannot make an authorized tenant\'s concurrent blob pull fail', async () => {
    const image = makeImage([3000, 5000]);
    const upstream = await upstreamWith(image, ['public/app']);
    upstream.push('public/app', 'v1', makeImage([700]));
    const layer = image.blobs[1] as { digest: string; bytes: Buffer };
    const cache = await cacheFor(upstream);
    const tokenA = await cacheToken(cache.url, upstream.host, 'private/app', A);
    const auth = { authorization: `Bearer ${tokenA}` };
    expect((await call(`${cache.url}/v2/private/app/manifests/${image.manifestDigest}?ns=${upstream.host}`, { headers: auth })).status).toBe(200);

    upstream.delayMs = 800; // an ordinary internet round trip, a bit long
    const attacker = call(`${cache.url}/v2/public/app/blobs/${layer.digest}?ns=${upstream.host}`);
    // The anonymous fill has reached the upstream (which takes 800 ms to answer) before the tenant asks.
    await waitUntil('the anonymous request reached the upstream', async () => upstream.requests.some((r) => r.path === `/v2/public/app/blobs/${layer.digest}`), { intervalMs: 5 });
    const tenant = await call(`${cache.url}/v2/private/app/blobs/${layer.digest}?ns=${upstream.host}`, { headers: auth });
    const refused = await attacker;
    expect(refused.status).toBe(404);
    expect(errorCode(refused)).toBe('BLOB_UNKNOWN');
    expect(tenant.status, 'tenant A got the anonymous starter\'s 404').toBe(200);
    expect(sha256(tenant.body)).toBe(layer.digest);
  }, 20_000);

  // ---------------------------------------------------------------------------------------------------------
  // Finding 3 (high for NeverVerifyAllowListedImages): "preloaded" is a property of the digest alone, and the
  // allowlist is matched against the name the CLIENT used, not the name the content was preloaded under. A
  // preloaded, NOT allowlisted private image is served without any verification through any allowlisted name.
  // ---------------------------------------------------------------------------------------------------------
  it('a preloaded image that is not allowlisted is not served unverified through an allowlisted repository name', async () => {
    const image = makeImage([2000, 3000]);
    const upstream = await upstreamWith(image);
    const cache = await cacheFor(upstream, {
      imagePullCredentialsVerificationPolicy: 'NeverVerifyAllowListedImages',
      preloadedImagesVerificationAllowlist: [`${upstream.host}/public/*`],
    });
    const work = await workDir();
    await writeOciLayout(join(work, 'layout'), image);
    await preloadImage(join(work, 'layout'), `${upstream.host}/private/app:v1`, cache.services);

    // Through its own name it is (correctly) not exempt: the client is challenged.
    expect((await call(`${cache.url}/v2/private/app/manifests/${image.manifestDigest}?ns=${upstream.host}`)).status).toBe(401);
    // Through an allowlisted name that has nothing to do with it: served, no upstream contact.
    const manifest = await call(`${cache.url}/v2/public/anything/manifests/${image.manifestDigest}?ns=${upstream.host}`);
    const layer = image.blobs[1] as { digest: string };
    const blob = await call(`${cache.url}/v2/public/anything/blobs/${layer.digest}?ns=${upstream.host}`);
    expectChallenge(manifest, 'non-allowlisted preloaded manifest served via an allowlisted name');
    expectChallenge(blob, 'non-allowlisted preloaded layer served via an allowlisted name');
  });

  // ---------------------------------------------------------------------------------------------------------
  // Finding 4 (medium): a verified pull ends "preloaded" only for the (registry, repository, manifest digest)
  // row it wrote. The kubelet keys "pulled by the kubelet" on the image ID, so afterwards every name needs
  // verification. Here the layers stay preloaded (served to anyone, even through the very repository whose
  // manifest is now refused), and so does the manifest under every other name.
  // ---------------------------------------------------------------------------------------------------------
  it('after a credentialed pull of a preloaded image, its layers and other names are no longer served unverified', async () => {
    const image = makeImage([2000, 3000]);
    const upstream = await upstreamWith(image);
    const cache = await cacheFor(upstream); // default NeverVerifyPreloadedImages, tagTtl 0s
    const work = await workDir();
    await writeOciLayout(join(work, 'layout'), image);
    await preloadImage(join(work, 'layout'), `${upstream.host}/private/app:v1`, cache.services);

    const tokenA = await cacheToken(cache.url, upstream.host, 'private/app', A);
    expect((await call(`${cache.url}/v2/private/app/manifests/v1?ns=${upstream.host}`, { headers: { authorization: `Bearer ${tokenA}` } })).status).toBe(200);
    expect(cache.services.records.get(upstream.host, 'private/app', image.manifestDigest)).toMatchObject({ preloaded: false, nodePodsAccessible: false });

    // The manifest is now verification-only in private/app (as the kubelet would do) ...
    expect((await call(`${cache.url}/v2/private/app/manifests/${image.manifestDigest}?ns=${upstream.host}`)).status).toBe(401);
    // ... but not its layer in the same repository, nor the manifest under another name.
    const layer = image.blobs[1] as { digest: string };
    const blob = await call(`${cache.url}/v2/private/app/blobs/${layer.digest}?ns=${upstream.host}`);
    const otherName = await call(`${cache.url}/v2/other/name/manifests/${image.manifestDigest}?ns=${upstream.host}`);
    expectChallenge(blob, 'layer of a no-longer-preloaded image served to an anonymous client');
    expectChallenge(otherName, 'no-longer-preloaded manifest served under another name');
  });

  // ---------------------------------------------------------------------------------------------------------
  // Finding 5 (low; needs an upstream that accepts a manifest whose blobs are not in the repository, e.g.
  // non-distributable/foreign layers with urls, or validation turned off): a blob is served to anyone
  // authorized for ANY manifest of the repository that lists its digest — including a manifest the attacker
  // wrote. Knowing a private layer's digest is then enough.
  // ---------------------------------------------------------------------------------------------------------
  it('a manifest an attacker publishes that merely lists a private layer digest does not unlock the stored layer', async () => {
    const image = makeImage([2000, 3000]);
    const upstream = await upstreamWith(image, ['attacker/pub']);
    const layer = image.blobs[1] as { digest: string; bytes: Buffer };
    const cache = await cacheFor(upstream);
    const tokenA = await cacheToken(cache.url, upstream.host, 'private/app', A);
    const auth = { authorization: `Bearer ${tokenA}` };
    expect((await call(`${cache.url}/v2/private/app/manifests/${image.manifestDigest}?ns=${upstream.host}`, { headers: auth })).status).toBe(200);
    expect((await call(`${cache.url}/v2/private/app/blobs/${layer.digest}?ns=${upstream.host}`, { headers: auth })).status).toBe(200);
    await cache.services.blobs.settle();

    // The attacker's public manifest names the private layer's digest; the upstream does not hold that blob there.
    const decoy = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(Buffer.from('{}')), size: 2 },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', digest: layer.digest, size: layer.bytes.length, urls: ['https://example.invalid/x'] }],
      }),
    );
    const decoyDigest = upstream.pushManifest('attacker/pub', 'v1', decoy, 'application/vnd.oci.image.manifest.v1+json');
    expect((await call(`${cache.url}/v2/attacker/pub/manifests/${decoyDigest}?ns=${upstream.host}`)).status).toBe(200);
    const direct = await fetch(`${upstream.url}/v2/attacker/pub/blobs/${layer.digest}`);
    expect(direct.status).toBe(404);
    const stolen = await call(`${cache.url}/v2/attacker/pub/blobs/${layer.digest}?ns=${upstream.host}`);
    // The upstream's own answer for that repository: the blob is not there.
    expect(stolen.status, 'private layer served on the strength of an attacker-written manifest').toBe(404);
    expect(errorCode(stolen)).toBe('BLOB_UNKNOWN');
  });
});
