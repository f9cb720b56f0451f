import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { loadConfig, ConfigError } from '../../src/config/load.js';
import { preloadImage } from '../../src/preload/preload.js';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage, type FakeImage } from '../support/fake-upstream.js';
import { call, errorCode } from '../support/http-client.js';
import { writeOciLayout } from '../support/oci-layout.js';
import { cacheToken, pullLikeContainerd } from '../support/registry-auth.js';

const A = { username: 'tenant-a', password: 'secret-pw-of-a' };
const A2 = { username: 'tenant-a', password: 'rotated-pw-of-a' };
const B = { username: 'tenant-b', password: 'secret-pw-of-b' };
const C = { username: 'tenant-c', password: 'not-a-valid-pw' };
const ALL_SECRETS = [A.password, A2.password, B.password, C.password];

describe('credential verification flows', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    vi.restoreAllMocks();
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function privateUpstream(users: Record<string, string> = { [A.username]: A.password, [B.username]: B.password }): Promise<{ upstream: FakeUpstream; image: FakeImage }> {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    upstream.auth = { kind: 'basic', users, publicRepos: ['public/app'] };
    const image = makeImage([4000, 5000]);
    upstream.push('private/app', 'v1', image);
    upstream.push('public/app', 'v1', image);
    return { upstream, image };
  }

  async function cacheFor(upstream: FakeUpstream, overrides: Record<string, unknown> = {}, storage?: string): Promise<TestCache> {
    const cache = await startCache({ [upstream.host]: upstream.url }, overrides, storage);
    cleanup.push(() => cache.stop({ keepStorage: storage !== undefined }));
    return cache;
  }

  const manifestUrl = (cache: TestCache, upstream: FakeUpstream, image: FakeImage, repo = 'private/app', ref = image.manifestDigest): string =>
    `${cache.url}/v2/${repo}/manifests/${ref}?ns=${upstream.host}`;

  it('challenges with its own realm, issues tokens to POSTed and GET Basic credentials, and binds them to the scope', async () => {
    const { upstream, image } = await privateUpstream();
    const cache = await cacheFor(upstream);
    const url = manifestUrl(cache, upstream, image, 'private/app', 'v1');
    const { first, final } = await pullLikeContainerd(url, upstream.host, 'private/app', A);
    expect(first.status).toBe(401);
    expect(first.headers['www-authenticate']).toBe(
      `Bearer realm="${cache.url}/auth/token?ns=${encodeURIComponent(upstream.host)}",service="registry-cache",scope="repository:private/app:pull"`,
    );
    expect(final.status).toBe(200);
    expect(final.body.equals(image.manifest)).toBe(true);

    const viaGet = await fetch(`${cache.url}/auth/token?ns=${upstream.host}&service=registry-cache&scope=repository:private/app:pull`, {
      headers: { authorization: `Basic ${Buffer.from(`${A.username}:${A.password}`).toString('base64')}` },
    });
    const body = (await viaGet.json()) as { token: string; expires_in: number };
    expect(body.expires_in).toBe(300);
    expect((await call(url, { headers: { authorization: `Bearer ${body.token}` } })).status).toBe(200);
    // A token for one repository does not open another: the client is challenged again.
    const elsewhere = await call(manifestUrl(cache, upstream, image, 'public/app', 'v1'), { headers: { authorization: `Bearer ${body.token}` } });
    expect(elsewhere.status).toBe(401);
    expect(elsewhere.headers['www-authenticate']).toContain('scope="repository:public/app:pull"');
    const bogus = await call(url, { headers: { authorization: 'Bearer not-a-token' } });
    expect(bogus.status).toBe(401);
  });

  it('serves tenant A, refuses tenant B-without-access and anonymous clients, and verifies without re-downloading', async () => {
    const { upstream, image } = await privateUpstream({ [A.username]: A.password });
    const cache = await cacheFor(upstream);
    const url = manifestUrl(cache, upstream, image);
    expect((await pullLikeContainerd(url, upstream.host, 'private/app', A)).final.status).toBe(200);
    // Verification is a GET by digest (possession); a refused one downloads nothing.
    const downloads = (): number => upstream.requests.filter((r) => r.method === 'GET' && r.path.includes('/manifests/') && r.status === 200).length;
    const gets = downloads();
    const anon = await pullLikeContainerd(url, upstream.host, 'private/app');
    expect(anon.final.status).toBe(401);
    expect(errorCode(anon.final)).toBe('UNAUTHORIZED');
    const b = await pullLikeContainerd(url, upstream.host, 'private/app', B);
    expect(b.final.status).toBe(401);
    expect(downloads()).toBe(gets);
  });

  it('keeps verifying the old credential locally after rotation, and verifies a new one upstream once', async () => {
    const { upstream, image } = await privateUpstream();
    const cache = await cacheFor(upstream);
    const url = manifestUrl(cache, upstream, image);
    const bearer = async (cred: { username: string; password: string }) => ({ authorization: `Bearer ${await cacheToken(cache.url, upstream.host, 'private/app', cred)}` });
    expect((await call(url, { headers: await bearer(A) })).status).toBe(200);
    // Rotate: the registry now only knows A's new password.
    upstream.auth = { kind: 'basic', users: { [A2.username]: A2.password } };
    const before = upstream.requests.length;
    expect((await call(url, { headers: await bearer(A) })).status).toBe(200);
    expect(upstream.requests.length).toBe(before);
    expect((await call(url, { headers: await bearer(A2) })).status).toBe(200);
    expect(upstream.requests.length).toBe(before + 1);
    expect((await call(url, { headers: await bearer(A2) })).status).toBe(200);
    expect(upstream.requests.length).toBe(before + 1);
  });

  it('serves blobs only to clients authorized for a manifest of the same repository that references them', async () => {
    const { upstream, image } = await privateUpstream();
    const cache = await cacheFor(upstream);
    const tokenA = await cacheToken(cache.url, upstream.host, 'private/app', A);
    const layer = image.blobs[1] as { digest: string };
    expect((await call(manifestUrl(cache, upstream, image), { headers: { authorization: `Bearer ${tokenA}` } })).status).toBe(200);
    const blobUrl = (repo: string) => `${cache.url}/v2/${repo}/blobs/${layer.digest}?ns=${upstream.host}`;
    expect((await call(blobUrl('private/app'), { headers: { authorization: `Bearer ${tokenA}` } })).status).toBe(200);
    await cache.services.blobs.settle();
    let before = upstream.requests.length;
    expect((await call(blobUrl('private/app'), { headers: { authorization: `Bearer ${tokenA}` } })).status).toBe(200);
    expect(upstream.requests.length).toBe(before);
    // Tenant B: verified once against the manifest that references the blob (a GET by digest, hashed), then served.
    const tokenB = await cacheToken(cache.url, upstream.host, 'private/app', B);
    before = upstream.requests.length;
    expect((await call(blobUrl('private/app'), { headers: { authorization: `Bearer ${tokenB}` } })).status).toBe(200);
    expect(upstream.requests.slice(before).map((r) => `${r.method} ${r.path}`)).toEqual([`GET /v2/private/app/manifests/${image.manifestDigest}`]);
    // Anonymous: challenged, never handed the stored bytes.
    const anon = await call(blobUrl('private/app'));
    expect(anon.status).toBe(401);
    // The same digest asked for through a repository it was never pulled through is verified there upstream: the
    // client's own GET of the blob through that repository (hashed), never the stored copy.
    upstream.auth = { kind: 'basic', users: { [A.username]: A.password, [B.username]: B.password }, publicRepos: ['public/app'] };
    const tokenOther = await cacheToken(cache.url, upstream.host, 'other/repo', A);
    before = upstream.requests.length;
    const other = await call(blobUrl('other/repo'), { headers: { authorization: `Bearer ${tokenOther}` } });
    expect(other.status).toBe(404);
    expect(errorCode(other)).toBe('BLOB_UNKNOWN');
    expect(upstream.requests.slice(before).map((r) => `${r.method} ${r.path}`)).toEqual([`GET /v2/other/repo/blobs/${layer.digest}`]);
  });

  it('turns a pull intent left by a crash into a record without credentials, forcing verification', async () => {
    const { upstream, image } = await privateUpstream();
    const storage = await mkdtemp(join(tmpdir(), 'rc-intent-'));
    cleanup.push(() => rm(storage, { recursive: true, force: true }));
    const first = await startCache({ [upstream.host]: upstream.url }, {}, storage);
    // A crash between the content commit and the record: the pull stores its content but never records it, and its
    // intent is still open when the process goes.
    const recordSuccess = vi.spyOn(first.services.records, 'recordSuccess').mockImplementation(() => undefined);
    const tokenA = await cacheToken(first.url, upstream.host, 'private/app', A);
    expect((await call(`${first.url}/v2/private/app/manifests/${image.manifestDigest}?ns=${upstream.host}`, { headers: { authorization: `Bearer ${tokenA}` } })).status).toBe(200);
    expect(recordSuccess).toHaveBeenCalled();
    first.services.intents.begin(upstream.host, 'private/app', image.manifestDigest);
    expect(first.services.records.get(upstream.host, 'private/app', image.manifestDigest)).toBeUndefined();
    await first.stop({ keepStorage: true });
    const second = await cacheFor(upstream, {}, storage);
    expect(second.logs.some((l) => l.includes('pull intents left by a crash'))).toBe(true);
    expect(second.services.records.get(upstream.host, 'private/app', image.manifestDigest)).toMatchObject({ nodePodsAccessible: false, credentialHashes: [], preloaded: false });
    const token = await cacheToken(second.url, upstream.host, 'private/app', A);
    const before = upstream.requests.length;
    expect((await call(manifestUrl(second, upstream, image), { headers: { authorization: `Bearer ${token}` } })).status).toBe(200);
    // Verified upstream with a GET by digest (a fresh process first meets the registry's Basic challenge: 401, then 200).
    const made = upstream.requests.slice(before);
    expect(made.map((r) => `${r.method} ${Boolean(r.headers.authorization)}`)).toEqual(['GET false', 'GET true']);
  });

  it('counts a store that ran under NeverVerify as preloaded the first time verification is enabled', async () => {
    const { upstream, image } = await privateUpstream();
    const storage = await mkdtemp(join(tmpdir(), 'rc-first-'));
    cleanup.push(() => rm(storage, { recursive: true, force: true }));
    const open = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify' }, storage);
    const tokenA = await cacheToken(open.url, upstream.host, 'private/app', A);
    expect((await call(`${open.url}/v2/private/app/manifests/${image.manifestDigest}?ns=${upstream.host}`, { headers: { authorization: `Bearer ${tokenA}` } })).status).toBe(200);
    expect(open.services.records.get(upstream.host, 'private/app', image.manifestDigest)).toBeUndefined();
    await open.stop({ keepStorage: true });

    const verifying = await cacheFor(upstream, { imagePullCredentialsVerificationPolicy: 'NeverVerifyPreloadedImages' }, storage);
    expect(verifying.logs.some((l) => l.includes('stored content counts as preloaded'))).toBe(true);
    const before = upstream.requests.length;
    const anon = await call(manifestUrl(verifying, upstream, image));
    expect(anon.status).toBe(200);
    expect(upstream.requests.length).toBe(before);
    await verifying.stop({ keepStorage: true });
    // Only the first enable does this: a later restart does not re-mark anything.
    const again = await cacheFor(upstream, { imagePullCredentialsVerificationPolicy: 'AlwaysVerify' }, storage);
    expect(again.logs.some((l) => l.includes('stored content counts as preloaded'))).toBe(false);
    expect((await call(manifestUrl(again, upstream, image))).status).toBe(401);
  });

  it('skips verification for allowlisted preloaded images only', async () => {
    const { upstream, image } = await privateUpstream();
    const cache = await cacheFor(upstream, {
      imagePullCredentialsVerificationPolicy: 'NeverVerifyAllowListedImages',
      preloadedImagesVerificationAllowlist: [`${upstream.host}/private/*`],
    });
    const work = await mkdtemp(join(tmpdir(), 'rc-allow-'));
    cleanup.push(() => rm(work, { recursive: true, force: true }));
    const other = makeImage([700]);
    upstream.push('private/app', 'v2', other);
    await writeOciLayout(join(work, 'a'), image);
    await writeOciLayout(join(work, 'b'), other);
    await preloadImage(join(work, 'a'), `${upstream.host}/private/app:v1`, cache.services);
    await preloadImage(join(work, 'b'), `${upstream.host}/elsewhere/app:v2`, cache.services);
    const before = upstream.requests.length;
    const allowed = await call(manifestUrl(cache, upstream, image));
    expect(allowed.status).toBe(200);
    expect(upstream.requests.length).toBe(before);
    const notAllowed = await call(manifestUrl(cache, upstream, other, 'elsewhere/app'));
    expect(notAllowed.status).toBe(401);
  });

  it('rejects invalid allowlist entries at startup, naming them', () => {
    for (const entry of ['*', '/*', 'docker.io/library/alpine:3', 'registry.example/*/x']) {
      try {
        loadConfig({ env: {}, overrides: { preloadedImagesVerificationAllowlist: ['alpine', entry] } });
        expect.fail(`accepted ${entry}`);
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        expect((err as ConfigError).key).toBe('preloadedImagesVerificationAllowlist');
        expect((err as Error).message).toContain(`"${entry}"`);
      }
    }
  });

  it('uses node-wide config.json credentials for clients without their own, recording nodePodsAccessible', async () => {
    const { upstream, image } = await privateUpstream();
    const work = await mkdtemp(join(tmpdir(), 'rc-node-'));
    cleanup.push(() => rm(work, { recursive: true, force: true }));
    const configJson = join(work, 'config.json');
    // Two matching keys: the more specific one is wrong and tried first; the kubelet falls through to the next.
    await writeFile(
      configJson,
      JSON.stringify({
        auths: {
          [`${upstream.host}/private/app`]: { auth: Buffer.from(`${C.username}:${C.password}`).toString('base64') },
          [`${upstream.host}/private`]: { username: A.username, password: A.password },
          'unrelated.example': { username: 'x', password: 'y' },
        },
      }),
    );
    const cache = await cacheFor(upstream, { nodeDockerConfig: configJson });
    const res = await call(manifestUrl(cache, upstream, image));
    expect(res.status).toBe(200);
    expect(cache.services.records.get(upstream.host, 'private/app', image.manifestDigest)).toMatchObject({ nodePodsAccessible: true });
    const before = upstream.requests.length;
    const tokenC = await cacheToken(cache.url, upstream.host, 'private/app', C);
    expect((await call(manifestUrl(cache, upstream, image), { headers: { authorization: `Bearer ${tokenC}` } })).status).toBe(200);
    expect(upstream.requests.length).toBe(before);
  });

  it('runs a kubelet credential provider plugin and caches its answer as it says', async () => {
    const { upstream, image } = await privateUpstream();
    const work = await mkdtemp(join(tmpdir(), 'rc-provider-'));
    cleanup.push(() => rm(work, { recursive: true, force: true }));
    const bin = join(work, 'bin');
    await writeFile(join(work, 'calls'), '');
    await rm(bin, { recursive: true, force: true });
    await (await import('node:fs/promises')).mkdir(bin);
    const plugin = join(bin, 'test-provider');
    await writeFile(
      plugin,
      `#!${process.execPath}
const fs = require('node:fs');
const req = JSON.parse(fs.readFileSync(0, 'utf8'));
fs.appendFileSync(${JSON.stringify(join(work, 'calls'))}, req.kind + ' ' + req.image + ' ' + process.env.PROVIDER_MODE + '\\n');
process.stdout.write(JSON.stringify({
  apiVersion: 'credentialprovider.kubelet.k8s.io/v1', kind: 'CredentialProviderResponse',
  cacheKeyType: 'Registry', cacheDuration: '1h',
  auth: { ${JSON.stringify(upstream.host)}: { username: ${JSON.stringify(A.username)}, password: ${JSON.stringify(A.password)} } }
}));
`,
    );
    await chmod(plugin, 0o755);
    const providerConfig = join(work, 'providers.yaml');
    await writeFile(
      providerConfig,
      `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: test-provider
    matchImages: ["${upstream.host}"]
    defaultCacheDuration: 10m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    env:
      - name: PROVIDER_MODE
        value: from-config
`,
    );
    const cache = await cacheFor(upstream, { credentialProviderConfig: providerConfig, credentialProviderBinDir: bin });
    expect((await call(manifestUrl(cache, upstream, image))).status).toBe(200);
    expect((await call(`${cache.url}/v2/private/app/blobs/${image.blobs[1]?.digest}?ns=${upstream.host}`)).status).toBe(200);
    expect((await call(manifestUrl(cache, upstream, image, 'private/app', 'v1'))).status).toBe(200);
    const calls = (await readFile(join(work, 'calls'), 'utf8')).trim().split('\n');
    expect(calls).toEqual([`CredentialProviderRequest ${upstream.host}/private/app from-config`]);
    expect(cache.services.records.get(upstream.host, 'private/app', image.manifestDigest)?.nodePodsAccessible).toBe(true);
  });

  it('never writes a credential to logs, the database or error bodies, and keeps the node secret 0600', async () => {
    const { upstream, image } = await privateUpstream();
    const cache = await cacheFor(upstream, { logLevel: 'debug' });
    const bodies: string[] = [];
    for (const cred of [A, B, C, A2]) {
      const r = await pullLikeContainerd(manifestUrl(cache, upstream, image), upstream.host, 'private/app', cred);
      bodies.push(r.first.body.toString(), r.final.body.toString());
      const basic = await call(manifestUrl(cache, upstream, image), { headers: { authorization: `Basic ${Buffer.from(`${cred.username}:${cred.password}`).toString('base64')}` } });
      bodies.push(basic.body.toString());
    }
    cache.services.metadata.flushTouches();
    const dbFiles = ['registry-cache.db', 'registry-cache.db-wal'].map((f) => join(cache.storage, f));
    const dbBytes = (await Promise.all(dbFiles.map((f) => readFile(f).catch(() => Buffer.alloc(0))))).map((b) => b.toString('latin1')).join('');
    const haystacks = { logs: cache.logs.join('\n'), db: dbBytes, bodies: bodies.join('\n') };
    for (const [where, text] of Object.entries(haystacks)) {
      for (const secret of ALL_SECRETS) {
        expect(text.includes(secret), `${where} contains a password`).toBe(false);
        expect(text.includes(Buffer.from(`tenant-a:${secret}`).toString('base64')), `${where} contains a Basic header`).toBe(false);
      }
    }
    expect((await stat(join(cache.storage, 'node-secret'))).mode & 0o777).toBe(0o600);
    // The records hold keyed hashes: two credentials, two hashes, none equal to a plain SHA-256 of the secret.
    const record = cache.services.records.get(upstream.host, 'private/app', image.manifestDigest);
    expect(record?.credentialHashes.length).toBeGreaterThanOrEqual(2);
  });
});
