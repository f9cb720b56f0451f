import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { DEAD_SERVER, startContainerd, writeHostsToml, type ContainerdDaemon } from '../support/containerd.js';
import { startDockerRegistry, type AccessLogEntry, type DockerRegistry } from '../support/docker-registry.js';
import { imageByTag, makeOciLayout, type OciLayoutDescription } from '../support/make-image.js';
import { skopeoCopyToRegistry, skopeoInspectRaw, writeAuthFile } from '../support/skopeo.js';
import { makeTempDir, removeTempDir } from '../support/temp-dir.js';
import { e2eGate } from '../support/tools.js';
import { sha256 } from '../support/fake-upstream.js';

const gate = e2eGate(['docker-registry', 'skopeo', 'containerd', 'ctr', 'htpasswd']);
if (!gate.run) console.warn(`skipping e2e credential tests: ${gate.reason}`);

const TENANT_A = { user: 'tenant-a', pass: 'a-pass-e2e-4411' };
const TENANT_B = { user: 'tenant-b', pass: 'b-pass-e2e-9902' };
const KIB = 1024;

describe.runIf(gate.run)('credential-bound cache hits with real containerd and a private docker-registry', () => {
  let work: string;
  let privateRegistry: DockerRegistry;
  let publicRegistry: DockerRegistry;
  let cache: TestCache;
  let layout: OciLayoutDescription;
  const daemons: ContainerdDaemon[] = [];
  const hostsDir = (): string => join(work, 'certs.d');

  beforeAll(async () => {
    work = await makeTempDir('rc-e2e-cred-');
    privateRegistry = await startDockerRegistry({ htpasswd: [TENANT_A] });
    publicRegistry = await startDockerRegistry();
    layout = await makeOciLayout(join(work, 'oci'), {
      mediaTypes: 'oci',
      images: [{ tag: 'v1', layers: [{ sizeBytes: 4 * KIB, seed: 'p1' }, { sizeBytes: 300 * KIB, seed: 'p2' }, { sizeBytes: 900 * KIB, seed: 'p3' }] }],
    });
    await skopeoCopyToRegistry(join(work, 'oci'), 'v1', `${privateRegistry.host}/team/secret:v1`, { creds: TENANT_A });
    await skopeoCopyToRegistry(join(work, 'oci'), 'v1', `${publicRegistry.host}/library/open:v1`);
    cache = await startCache({ [privateRegistry.host]: privateRegistry.url, [publicRegistry.host]: publicRegistry.url });
    for (const r of [privateRegistry, publicRegistry]) {
      await writeHostsToml(hostsDir(), r.host, { server: DEAD_SERVER, mirrors: [{ url: cache.url, capabilities: ['pull', 'resolve'] }] });
    }
  }, 180_000);

  afterAll(async () => {
    for (const d of daemons) await d.stop().catch(() => undefined);
    await cache?.stop();
    await privateRegistry?.stop();
    await publicRegistry?.stop();
    if (work) await removeTempDir(work);
  });

  async function freshContainerd(): Promise<ContainerdDaemon> {
    const d = await startContainerd();
    daemons.push(d);
    return d;
  }

  /** The registry's access log once every request the cache made so far is in it. */
  async function settledLog(registry: DockerRegistry): Promise<AccessLogEntry[]> {
    await cache.services.blobs.settle();
    return registry.settledRequests();
  }

  const describeRequests = (entries: AccessLogEntry[]): string => entries.map((e) => `${e.method} ${e.uri.replace(/sha256:[a-f0-9]{58}/, '…')} ${e.status}`).join(', ') || 'none';

  it('lets tenant A pull, refuses tenant B and an anonymous pull of the cached image, and serves A again with no upstream blob request', async () => {
    const ref = `${privateRegistry.host}/team/secret:v1`;
    const digest = imageByTag(layout, 'v1').digest;
    const before = await settledLog(privateRegistry);

    const a1 = await freshContainerd();
    await a1.pull(ref, { hostsDir: hostsDir(), user: TENANT_A });
    expect(await a1.check(ref)).toMatchObject({ digest, complete: true });
    const afterA = await settledLog(privateRegistry);
    const coldA = afterA.slice(before.length);
    expect(coldA.filter((e) => e.method === 'GET' && e.uri.includes('/blobs/') && e.status === 200)).toHaveLength(4);

    const anonymous = await freshContainerd();
    await expect(anonymous.pull(ref, { hostsDir: hostsDir() })).rejects.toThrow();
    const tenantB = await freshContainerd();
    await expect(tenantB.pull(ref, { hostsDir: hostsDir(), user: TENANT_B })).rejects.toThrow();
    const afterRefusals = await settledLog(privateRegistry);
    const refusals = afterRefusals.slice(afterA.length);
    expect(refusals.filter((e) => e.method === 'GET')).toHaveLength(0);
    // The refused clients went through the cache's own token realm (ctr POSTs a password grant or GETs anonymously).
    expect(cache.logs.filter((l) => l.includes('"path":"/auth/token"')).length).toBeGreaterThanOrEqual(3);

    const a2 = await freshContainerd();
    await a2.pull(ref, { hostsDir: hostsDir(), user: TENANT_A });
    expect(await a2.check(ref)).toMatchObject({ digest, complete: true });
    const warmA = (await settledLog(privateRegistry)).slice(afterRefusals.length);
    expect(warmA.filter((e) => e.uri.includes('/blobs/'))).toHaveLength(0);
    // containerd's first request of a pull carries no credentials: it is tried upstream anonymously (refused, 401), as
    // it would be for an image the cache does not hold, so it cannot tell what is stored. Nothing is downloaded.
    expect(warmA.filter((e) => e.method === 'GET' && e.status === 200)).toHaveLength(0);

    const record = cache.services.records.get(privateRegistry.host, 'team/secret', digest);
    expect(record?.nodePodsAccessible).toBe(false);
    expect(record?.credentialHashes).toHaveLength(1);
    console.info(
      `[e2e-cred] tenant A cold: ${coldA.length} upstream (${describeRequests(coldA)}); anonymous + tenant B refused: ${refusals.length} upstream (${describeRequests(refusals)}); tenant A warm: ${warmA.length} upstream (${describeRequests(warmA)})`,
    );
  });

  it('pulls a public image anonymously through the cache (no credentials, no fallback to the dead server)', async () => {
    const ref = `${publicRegistry.host}/library/open:v1`;
    const d = await freshContainerd();
    await d.pull(ref, { hostsDir: hostsDir() });
    expect(await d.check(ref)).toMatchObject({ digest: imageByTag(layout, 'v1').digest, complete: true });
    const record = cache.services.records.get(publicRegistry.host, 'library/open', imageByTag(layout, 'v1').digest);
    expect(record?.nodePodsAccessible).toBe(true);
  });

  it('accepts Basic credentials from skopeo with an auth file, answering its /v2/ ping with the Bearer challenge', async () => {
    const host = cache.url.replace('http://', '');
    const authFile = join(work, 'auth.json');
    await writeAuthFile(authFile, { [host]: TENANT_A });
    const direct = await startCache({ [privateRegistry.host]: privateRegistry.url }, {}, undefined);
    try {
      const directHost = direct.url.replace('http://', '');
      await writeAuthFile(authFile, { [directHost]: TENANT_A });
      const raw = await skopeoInspectRaw(`docker://${directHost}/team/secret:v1`, ['--authfile', authFile]);
      expect(sha256(raw)).toBe(imageByTag(layout, 'v1').digest);
      await expect(skopeoInspectRaw(`docker://${directHost}/team/secret:v1`, [])).rejects.toThrow();
    } finally {
      await direct.stop();
    }
  });
});
