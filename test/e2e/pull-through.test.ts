import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { DEAD_SERVER, startContainerd, writeHostsToml, type ContainerdDaemon } from '../support/containerd.js';
import { startDockerRegistry, type AccessLogEntry, type DockerRegistry } from '../support/docker-registry.js';
import { imageByTag, makeOciLayout, writeDirTransport, type OciLayoutDescription } from '../support/make-image.js';
import { skopeoCopyDirToRegistry, skopeoCopyFromRegistry, skopeoCopyToRegistry, skopeoInspectRaw, writeRegistriesConf } from '../support/skopeo.js';
import { makeTempDir, removeTempDir } from '../support/temp-dir.js';
import { e2eGate } from '../support/tools.js';
import { sha256 } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';

const gate = e2eGate(['docker-registry', 'skopeo', 'containerd', 'ctr']);
if (!gate.run) console.warn(`skipping e2e pull-through tests: ${gate.reason}`);

const KIB = 1024;
const PLATFORMS = [
  { os: 'linux', architecture: 'amd64' },
  { os: 'linux', architecture: 'arm64', variant: 'v8' },
];

/** Upstream requests made between two snapshots of the registry's access log. */
function since(before: AccessLogEntry[], after: AccessLogEntry[]): AccessLogEntry[] {
  return after.slice(before.length);
}
const blobGets = (entries: AccessLogEntry[]): AccessLogEntry[] => entries.filter((e) => e.method === 'GET' && e.uri.includes('/blobs/'));

describe.runIf(gate.run)('real clients pulling through registry-cache from a real docker-registry', () => {
  let work: string;
  let registry: DockerRegistry;
  let cache: TestCache;
  let oci: OciLayoutDescription;
  let docker: OciLayoutDescription;
  const daemons: ContainerdDaemon[] = [];

  beforeAll(async () => {
    work = await makeTempDir('rc-e2e-');
    registry = await startDockerRegistry();
    oci = await makeOciLayout(join(work, 'oci'), {
      mediaTypes: 'oci',
      images: [
        { tag: 'single', layers: [{ sizeBytes: 8 * KIB, seed: 's1' }, { sizeBytes: 200 * KIB, seed: 's2' }, { sizeBytes: 1500 * KIB, seed: 's3', files: 3 }] },
        { tag: 'multi', platforms: PLATFORMS, layers: [{ sizeBytes: 16 * KIB, seed: 'm1' }, { sizeBytes: 300 * KIB, seed: 'm2' }] },
      ],
    });
    docker = await makeOciLayout(join(work, 'docker'), {
      mediaTypes: 'docker',
      images: [
        { tag: 'dsingle', layers: [{ sizeBytes: 12 * KIB, seed: 'd1' }, { sizeBytes: 100 * KIB, seed: 'd2' }] },
        { tag: 'dmulti', platforms: PLATFORMS, layers: [{ sizeBytes: 20 * KIB, seed: 'dm1' }] },
      ],
    });
    await skopeoCopyToRegistry(join(work, 'oci'), 'single', `${registry.host}/apps/oci:single`);
    await skopeoCopyToRegistry(join(work, 'oci'), 'multi', `${registry.host}/apps/oci:multi`);
    for (const tag of ['dsingle', 'dmulti']) {
      await writeDirTransport(docker, tag, join(work, `dir-${tag}`));
      await skopeoCopyDirToRegistry(join(work, `dir-${tag}`), `${registry.host}/apps/docker:${tag}`);
    }
    // The same upstream under two names: its real host:port (containerd sends it as ?ns=) and a dotted alias
    // for path-prefix mirrors (skopeo's registries.conf cannot express a host:port path component).
    cache = await startCache({ [registry.host]: registry.url, 'upstream.test': registry.url });
    await writeHostsToml(join(work, 'certs.d'), registry.host, { server: DEAD_SERVER, mirrors: [{ url: cache.url, capabilities: ['pull', 'resolve'] }] });
  }, 180_000);

  afterAll(async () => {
    for (const d of daemons) await d.stop().catch(() => undefined);
    await cache?.stop();
    await registry?.stop();
    if (work) await removeTempDir(work);
  });

  /** A containerd with an empty content store, so a pull really fetches every blob. */
  async function freshContainerd(): Promise<ContainerdDaemon> {
    const d = await startContainerd();
    daemons.push(d);
    return d;
  }

  /** The registry's access log once every request the cache made so far is in it. */
  async function settledLog(): Promise<AccessLogEntry[]> {
    await cache.services.blobs.settle();
    return registry.settledRequests();
  }

  it.each([
    ['apps/oci', 'single', 'OCI manifest', false],
    ['apps/oci', 'multi', 'OCI index, all platforms', true],
    ['apps/docker', 'dsingle', 'Docker schema2 manifest', false],
    ['apps/docker', 'dmulti', 'Docker manifest list, all platforms', true],
  ] as const)('containerd pulls %s:%s (%s) via ?ns= through the cache; the second pull makes no upstream blob request', async (repo, tag, _what, all) => {
    const layout = tag.startsWith('d') ? docker : oci;
    const image = imageByTag(layout, tag);
    const ref = `${registry.host}/${repo}:${tag}`;
    const hostsDir = join(work, 'certs.d');
    const before = await settledLog();
    const cold = await freshContainerd();
    await cold.pull(ref, { hostsDir, allPlatforms: all });
    expect(await cold.check(ref)).toMatchObject({ digest: image.digest, complete: true });
    const afterCold = await settledLog();
    const coldRequests = since(before, afterCold);
    const expectedBlobs = all ? image.blobs.length : (image.manifests[0]?.layers.length ?? 0) + 1;
    expect(blobGets(coldRequests)).toHaveLength(expectedBlobs);
    expect(cache.logs.some((l) => l.includes('"ns":"' + registry.host + '"'))).toBe(true);

    const warm = await freshContainerd();
    await warm.pull(ref, { hostsDir, allPlatforms: all });
    expect(await warm.check(ref)).toMatchObject({ digest: image.digest, complete: true });
    const warmRequests = since(afterCold, await settledLog());
    expect(blobGets(warmRequests)).toHaveLength(0);
    expect(warmRequests.filter((e) => e.method === 'GET' && e.uri.includes('/manifests/'))).toHaveLength(0);
    console.info(
      `[e2e] ${ref}: cold pull → ${coldRequests.length} upstream requests (${blobGets(coldRequests).length} blob GETs: ` +
        `${coldRequests.map((e) => `${e.method} ${e.uri.replace(/sha256:[a-f0-9]{58}/, '…')} ${e.status}`).join(', ')}); ` +
        `warm pull → ${warmRequests.length} (${warmRequests.map((e) => `${e.method} ${e.uri} ${e.status}`).join(', ')})`,
    );
    await cold.stop();
    await warm.stop();
  });

  it('skopeo copies an image through the cache addressed directly (default registry)', async () => {
    const direct = await startCache({ [registry.host]: registry.url });
    try {
      const host = direct.url.replace('http://', '');
      const raw = await skopeoInspectRaw(`docker://${host}/apps/oci:single`, ['--tls-verify=false']);
      expect(sha256(raw)).toBe(imageByTag(oci, 'single').digest);
      const out = join(work, 'skopeo-direct');
      await skopeoCopyFromRegistry(`${host}/apps/oci:multi`, out, 'multi', { env: {} });
      const again = join(work, 'skopeo-direct-2');
      const before = await settledLog();
      await skopeoCopyFromRegistry(`${host}/apps/oci:multi`, again, 'multi');
      const after = await settledLog();
      expect(blobGets(since(before, after))).toHaveLength(0);
    } finally {
      await direct.stop();
    }
  });

  it('skopeo pulls through the cache as a registries.conf mirror with a path prefix', async () => {
    const conf = join(work, 'registries.conf');
    const host = cache.url.replace('http://', '');
    await writeRegistriesConf(conf, [{ prefix: 'upstream.test', location: '127.0.0.1:9', mirrors: [`${host}/upstream.test`] }]);
    const raw = await skopeoInspectRaw('docker://upstream.test/apps/docker:dsingle', [], { registriesConf: conf });
    expect(sha256(raw)).toBe(imageByTag(docker, 'dsingle').digest);
    const out = join(work, 'skopeo-mirror');
    await skopeoCopyFromRegistry('upstream.test/apps/docker:dsingle', out, 'dsingle', { registriesConf: conf });
    expect(cache.logs.some((l) => l.includes('"path":"/v2/upstream.test/apps/docker/manifests/dsingle"'))).toBe(true);
  });
  it('pages a tag list with n and last although docker-registry ignores them', async () => {
    const ns = encodeURIComponent(registry.host);
    const whole = await call(`${registry.url}/v2/apps/oci/tags/list?n=1`);
    // The premise: this docker-registry answers every tag despite n=1.
    expect((JSON.parse(whole.body.toString()) as { tags: string[] }).tags).toEqual(['multi', 'single']);
    const first = await call(`${cache.url}/v2/apps/oci/tags/list?ns=${ns}&n=1`);
    expect(JSON.parse(first.body.toString())).toEqual({ name: 'apps/oci', tags: ['multi'] });
    expect(first.headers.link).toBe(`</v2/apps/oci/tags/list?n=1&last=multi&ns=${ns}>; rel="next"`);
    const second = await call(`${cache.url}/v2/apps/oci/tags/list?ns=${ns}&n=1&last=multi`);
    expect(JSON.parse(second.body.toString())).toEqual({ name: 'apps/oci', tags: ['single'] });
    expect(second.headers.link).toBeUndefined();
  });
});
