/**
 * Adversarial review after issue 11's security fixes: attacks that found a defect. Each test fails on the code as
 * reviewed and passes once the defect is fixed.
 */
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { LookupFunction } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage } from '../support/fake-upstream.js';
import { call, errorCode } from '../support/http-client.js';

const A = { username: 'tenant-a', password: 'pw-of-a-7f3c' };
const basic = (u: { username: string; password: string }): Record<string, string> => ({
  authorization: `Basic ${Buffer.from(`${u.username}:${u.password}`).toString('base64')}`,
});

/** Every name resolves to loopback: lets a test give fake upstreams real-world host names. */
const loopbackLookup = ((_hostname: string, options: { all?: boolean }, cb: (...args: unknown[]) => void) => {
  if (options?.all) cb(null, [{ address: '127.0.0.1', family: 4 }]);
  else cb(null, '127.0.0.1', 4);
}) as unknown as LookupFunction;

describe('adversarial review', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function upstream(): Promise<FakeUpstream> {
    const u = await new FakeUpstream().start();
    cleanup.push(() => u.stop());
    return u;
  }

  async function workDir(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'rc-review-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    return dir;
  }

  /**
   * A credential provider plugin (Image cache key, cached 5 minutes, no credentials) that notes each exec in
   * `log` and, while it runs (1 s), how many execs run at once in `running/`.
   */
  async function countingProvider(work: string, host: string): Promise<{ overrides: Record<string, unknown>; execs: () => Promise<string[]> }> {
    const bin = join(work, 'bin');
    const running = join(work, 'running');
    const log = join(work, 'execs.log');
    await mkdir(bin, { recursive: true });
    await mkdir(running, { recursive: true });
    await writeFile(log, '');
    const plugin = join(bin, 'counting-provider');
    await writeFile(
      plugin,
      `#!${process.execPath}
const fs = require('node:fs');
const req = JSON.parse(fs.readFileSync(0, 'utf8'));
const mine = ${JSON.stringify(running)} + '/' + process.pid;
fs.writeFileSync(mine, '');
const atOnce = fs.readdirSync(${JSON.stringify(running)}).length;
fs.appendFileSync(${JSON.stringify(log)}, req.image + ' ' + atOnce + '\\n');
setTimeout(() => {
  fs.rmSync(mine);
  process.stdout.write(JSON.stringify({
    apiVersion: 'credentialprovider.kubelet.k8s.io/v1', kind: 'CredentialProviderResponse', cacheKeyType: 'Image', cacheDuration: '5m', auth: {},
  }));
}, 1000);
`,
    );
    await chmod(plugin, 0o755);
    const providerConfig = join(work, 'providers.yaml');
    await writeFile(
      providerConfig,
      `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: counting-provider
    matchImages: ["${host}"]
    defaultCacheDuration: 5m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
`,
    );
    return {
      overrides: { credentialProviderConfig: providerConfig, credentialProviderBinDir: bin },
      execs: async () => (await readFile(log, 'utf8')).split('\n').filter(Boolean),
    };
  }

  it('concurrent requests for one image run the credential provider once, as the kubelet does', async () => {
    const u = await upstream();
    u.push('app', 'v1', makeImage([100]));
    const provider = await countingProvider(await workDir(), u.host);
    const cache = await startCache({ [u.host]: u.url }, provider.overrides);
    cleanup.push(() => cache.stop());
    const answers = await Promise.all(Array.from({ length: 12 }, () => call(`${cache.url}/v2/app/manifests/v1`)));
    for (const res of answers) expect(res.status).toBe(200);
    expect((await provider.execs()).length, 'plugin execs for one image').toBe(1);
  });

  it('a client cannot make the cache run credential provider plugins without bound (one process per repository name)', async () => {
    const u = await upstream();
    const provider = await countingProvider(await workDir(), u.host);
    const cache = await startCache({ [u.host]: u.url }, provider.overrides);
    cleanup.push(() => cache.stop());
    // 16 made-up repository names at once, as one anonymous client can send them.
    const answers = await Promise.all(Array.from({ length: 16 }, (_, i) => call(`${cache.url}/v2/made-up-${i}/manifests/v1`)));
    for (const res of answers) expect(res.status).toBe(404);
    const execs = await provider.execs();
    expect(execs.length).toBe(16);
    const mostAtOnce = Math.max(...execs.map((line) => Number(line.split(' ')[1])));
    expect(mostAtOnce, 'plugin processes running at once').toBeLessThanOrEqual(4);
  });

  it('an ns given twice is refused, never routed to the default registry with the client\'s credentials', async () => {
    const def = await upstream();
    def.auth = { kind: 'basic', users: { x: 'y' } };
    const cache = await startCache({ [def.host]: def.url });
    cleanup.push(() => cache.stop());
    const victim = basic({ username: 'victim', password: 'ghcr-token' });
    const res = await call(`${cache.url}/v2/acme/app/manifests/latest?ns=ghcr.io&ns=ghcr.io`, { headers: victim });
    expect(res.status).toBe(400);
    expect(errorCode(res)).toBe('UNSUPPORTED');
    const token = await call(`${cache.url}/auth/token?ns=ghcr.io&ns=${def.host}&scope=repository:acme/app:pull`, { headers: victim });
    expect(token.status).toBe(400);
    expect(def.requests).toEqual([]);
  });

  it('credential hashes any client can add to a record do not make every later access check read them all', async () => {
    // A registry that ignores credentials (an in-cluster registry without auth): every made-up credential proves
    // itself with one small manifest GET, and each proof adds a credential hash to the record.
    const u = await upstream();
    const image = makeImage([100]);
    u.push('app', 'v1', image);
    const cache = await startCache({ [u.host]: u.url }, { imagePullCredentialsVerificationPolicy: 'AlwaysVerify' });
    cleanup.push(() => cache.stop());
    const url = `${cache.url}/v2/app/manifests/${image.manifestDigest}`;
    for (let i = 0; i < 5; i++) expect((await call(url, { headers: basic({ username: `made-up-${i}`, password: 'x' }) })).status).toBe(200);
    const db = new Database(join(cache.storage, 'registry-cache.db'));
    cleanup.push(async () => void db.close());
    const hashes = db.prepare('SELECT count(*) FROM pull_record_credentials WHERE blob = (SELECT id FROM blobs WHERE digest = ?)').pluck();
    expect(hashes.get(image.manifestDigest)).toBe(5);
    // What a longer run of the same leaves (~200,000 upstream GETs of a few hundred bytes), written directly.
    db
      .prepare(
        `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
         INSERT INTO pull_record_credentials (registry, repository, blob, credential_hash, verified_at)
         SELECT ?, 'app', (SELECT id FROM blobs WHERE digest = ?), lower(hex(randomblob(32))), 0 FROM n`,
      )
      .run(u.host, image.manifestDigest);
    // A tenant whose record is there is served from the store, and its access check must not read the 200,000 hashes
    // (it blocked the event loop for every client: 0.3-1.8 s per request on this box). What is checked is the path,
    // not a time: the record lookup that reads every hash is never used by an access check.
    const tenant = basic({ username: 'made-up-0', password: 'x' });
    const readsEveryHash = vi.spyOn(cache.services.records, 'get');
    for (let i = 0; i < 5; i++) expect((await call(url, { headers: tenant })).status).toBe(200);
    expect(readsEveryHash).not.toHaveBeenCalled();
    expect(u.count('GET', /manifests/)).toBe(5);
  });

  it('with ns, a host-like first path component is not passed upstream as part of a repository name', async () => {
    const u = await upstream();
    u.push('app', 'v1', makeImage([100]));
    const cache = await startCache({ [u.host]: u.url });
    cleanup.push(() => cache.stop());
    for (const name of ['EVIL:1/app', `${u.host}/app`]) {
      const res = await call(`${cache.url}/v2/${name}/manifests/v1?ns=${u.host}`, { headers: basic(A) });
      expect(res.status, name).toBe(400);
      expect(errorCode(res)).toBe('NAME_INVALID');
    }
    expect(u.requests).toEqual([]);
    // The plain forms still work.
    expect((await call(`${cache.url}/v2/app/manifests/v1?ns=${u.host}`)).status).toBe(200);
    expect((await call(`${cache.url}/v2/${u.host}/app/manifests/v1`)).status).toBe(200);
  });

  it("a redirect target's auth challenge cannot steer a client's credentials to another host of the registry's domain", async () => {
    // A registry on a shared domain (ACR-like: every customer's registry is <name>.azurecr.io), a blob CDN it
    // redirects to, and another customer's host on the same domain that collects credentials.
    const registry = await upstream();
    const cdn = await upstream();
    const collector = await upstream();
    collector.auth = { kind: 'bearer', users: {} };
    const image = makeImage([2000]);
    const layer = image.blobs[1] as { digest: string; bytes: Buffer };
    registry.auth = { kind: 'basic', users: { [A.username]: A.password } };
    registry.push('app', 'v1', image);
    const port = (u: FakeUpstream): string => u.host.split(':')[1] as string;
    registry.fault = (r) => (r.method === 'GET' && r.path.includes('/blobs/') ? { kind: 'redirect', to: `http://blobs.cdn-of-registry.test:${port(cdn)}/x` } : undefined);
    cdn.fault = () => ({
      kind: 'status',
      status: 401,
      headers: { 'www-authenticate': `Bearer realm="http://attacker.azurecr.io:${port(collector)}/token",service="x",scope="repository:app:pull"` },
    });
    const cache = await startCache(
      {},
      {
        registries: { 'myreg.azurecr.io': { url: `http://myreg.azurecr.io:${port(registry)}`, redirectAllowlist: ['blobs.cdn-of-registry.test'] } },
        defaultRegistry: 'myreg.azurecr.io',
      },
      undefined,
      { dispatcherOptions: { lookup: loopbackLookup } },
    );
    cleanup.push(() => cache.stop());
    expect((await call(`${cache.url}/v2/app/manifests/v1`, { headers: basic(A) })).status).toBe(200);
    const res = await call(`${cache.url}/v2/app/blobs/${layer.digest}`, { headers: basic(A) });
    // A download that asks for credentials is a broken upstream, not a refusal of the client's credential.
    expect(res.status).toBe(502);
    expect(errorCode(res)).toBe('UNAVAILABLE');
    expect(cdn.requests.length).toBeGreaterThan(0);
    const leaked = collector.tokenRequests.filter((r) => r.headers.authorization !== undefined);
    expect(leaked.map((r) => r.headers.authorization), "tenant A's credential at another customer's host").toEqual([]);
  });
});

