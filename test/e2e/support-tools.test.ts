import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEAD_SERVER, startContainerd, writeHostsToml, type ContainerdDaemon } from '../support/containerd.js';
import { startDockerRegistry, type AccessLogEntry, type DockerRegistry } from '../support/docker-registry.js';
import {
  MEDIA_TYPES,
  imageByTag,
  layoutBlobPath,
  makeOciLayout,
  sha256Digest,
  writeDirTransport,
  type ImageDescription,
  type ImageSpec,
  type OciLayoutDescription,
} from '../support/make-image.js';
import { fetchManifest, pushImage, type Credentials } from '../support/registry-client.js';
import {
  skopeoCopyDirToRegistry,
  skopeoCopyFromRegistry,
  skopeoCopyToRegistry,
  skopeoInspectRaw,
  writeAuthFile,
  writeRegistriesConf,
} from '../support/skopeo.js';
import { makeTempDir, removeTempDir } from '../support/temp-dir.js';
import { e2eGate } from '../support/tools.js';

const gate = e2eGate(['docker-registry', 'skopeo', 'containerd', 'ctr', 'htpasswd']);
if (!gate.run) console.warn(`skipping e2e support self-test: ${gate.reason}`);

const KIB = 1024;
const TWO_PLATFORMS = [
  { os: 'linux', architecture: 'amd64' },
  { os: 'linux', architecture: 'arm64', variant: 'v8' },
];
const IMAGES: ImageSpec[] = [
  {
    tag: 'single',
    layers: [
      { sizeBytes: 4 * KIB, seed: 'a1' },
      { sizeBytes: 64 * KIB, seed: 'a2' },
      { sizeBytes: 1024 * KIB, seed: 'a3', files: 3 },
    ],
  },
  {
    tag: 'multi',
    platforms: TWO_PLATFORMS,
    layers: [
      { sizeBytes: 32 * KIB, seed: 'b1' },
      { sizeBytes: 256 * KIB, seed: 'b2', files: 2 },
    ],
  },
];

/** Asserts that the registry serves `image` under `repo:tag` with exactly the bytes we generated. */
async function expectManifestsIdentical(registry: DockerRegistry, repo: string, image: ImageDescription): Promise<void> {
  const top = await fetchManifest(registry.url, repo, image.tag);
  expect(top.status).toBe(200);
  expect(top.contentType).toBe(image.mediaType);
  expect(top.digest).toBe(image.digest);
  expect(top.dockerContentDigest).toBe(image.digest);
  expect(top.bytes.length).toBe(image.size);
  for (const child of image.manifests) {
    const m = await fetchManifest(registry.url, repo, child.digest);
    expect(m.status).toBe(200);
    expect(m.digest).toBe(child.digest);
    expect(m.contentType).toBe(child.mediaType);
  }
}

describe.runIf(gate.run)('e2e support modules drive real tools', () => {
  let work = '';
  let containerd: ContainerdDaemon | undefined;
  let oci: OciLayoutDescription;
  let docker: OciLayoutDescription;

  beforeAll(async () => {
    work = await makeTempDir('rc-support-');
    [oci, docker, containerd] = await Promise.all([
      makeOciLayout(join(work, 'oci-layout'), { mediaTypes: 'oci', images: IMAGES }),
      makeOciLayout(join(work, 'docker-layout'), { mediaTypes: 'docker', images: IMAGES }),
      startContainerd(),
    ]);
  });

  afterAll(async () => {
    await containerd?.stop();
    await removeTempDir(work);
  });

  function ctrd(): ContainerdDaemon {
    if (containerd === undefined) throw new Error('containerd did not start');
    return containerd;
  }

  it('makeOciLayout is deterministic and records the uncompressed tar digest as diff_id', async () => {
    const again = await makeOciLayout(join(work, 'again'), { mediaTypes: 'oci', images: IMAGES });
    expect(again.images.map((i) => i.digest)).toEqual(oci.images.map((i) => i.digest));
    const multi = imageByTag(oci, 'multi');
    expect(multi.isIndex).toBe(true);
    expect(multi.mediaType).toBe(MEDIA_TYPES.oci.index);
    const [amd64, arm64] = multi.manifests;
    // Each platform must get its own layer bytes, or a pull of one would satisfy the other.
    expect(amd64?.layers[0]?.digest).not.toBe(arm64?.layers[0]?.digest);
    const layer = imageByTag(oci, 'single').manifests[0]?.layers[2];
    if (layer === undefined) throw new Error('missing layer');
    const hash = createHash('sha256');
    await pipeline(createReadStream(layoutBlobPath(oci.dir, layer.digest)), createGunzip(), async (source: AsyncIterable<Buffer>) => {
      for await (const chunk of source) hash.update(chunk);
    });
    expect(`sha256:${hash.digest('hex')}`).toBe(layer.diffId);
    const config = JSON.parse(await readFile(layoutBlobPath(oci.dir, imageByTag(oci, 'single').manifests[0]?.config.digest ?? ''), 'utf8')) as {
      rootfs: { diff_ids: string[] };
    };
    expect(config.rootfs.diff_ids[2]).toBe(layer.diffId);
  });

  describe('with an anonymous docker-registry', () => {
    let registry: DockerRegistry | undefined;
    const reg = (): DockerRegistry => {
      if (registry === undefined) throw new Error('registry did not start');
      return registry;
    };

    beforeAll(async () => {
      registry = await startDockerRegistry();
    });

    afterAll(async () => {
      await registry?.stop();
    });

    it('skopeo pushes OCI images from a layout byte for byte', async () => {
      for (const tag of ['single', 'multi']) {
        await skopeoCopyToRegistry(oci.dir, tag, `${reg().host}/oci:${tag}`);
        await expectManifestsIdentical(reg(), 'oci', imageByTag(oci, tag));
      }
    });

    it('skopeo pushes a Docker schema 2 image and manifest list from dir: byte for byte', async () => {
      for (const tag of ['single', 'multi']) {
        const dir = join(work, `dir-${tag}`);
        await writeDirTransport(docker, tag, dir);
        await skopeoCopyDirToRegistry(dir, `${reg().host}/docker:${tag}`);
        const image = imageByTag(docker, tag);
        expect(image.mediaType).toBe(tag === 'multi' ? MEDIA_TYPES.docker.index : MEDIA_TYPES.docker.manifest);
        await expectManifestsIdentical(reg(), 'docker', image);
      }
    });

    it('pushImage pushes both media-type families over the HTTP API byte for byte', async () => {
      for (const layout of [oci, docker]) {
        for (const image of layout.images) {
          await pushImage(reg().url, `pushed/${layout.mediaTypes}`, layout, image.tag);
          await expectManifestsIdentical(reg(), `pushed/${layout.mediaTypes}`, image);
        }
      }
    });

    it('ctr pulls the single-arch image with the registry as its only working mirror', async () => {
      const hostsDir = join(work, 'certs-anon');
      await writeHostsToml(hostsDir, reg().host, { server: DEAD_SERVER, mirrors: [{ url: reg().url }] });
      const ref = `${reg().host}/oci:single`;
      await ctrd().pull(ref, { hostsDir });
      const check = await ctrd().check(ref);
      expect(check).toMatchObject({ digest: imageByTag(oci, 'single').digest, complete: true, unpacked: true, present: 4, total: 4 });
      // containerd adds no ?ns= here because the mirror and the image share a host.
      const served = await reg().waitForRequests((all) => all.some((r) => r.uri === '/v2/oci/manifests/single' && r.method === 'HEAD'));
      expect(served.filter((r) => r.userAgent.startsWith('containerd')).length).toBeGreaterThanOrEqual(5);
    });

    it('ctr pulls every platform of the OCI index and of the Docker manifest list', async () => {
      const hostsDir = join(work, 'certs-anon');
      for (const [repo, layout] of [['oci', oci], ['docker', docker]] as const) {
        const ref = `${reg().host}/${repo}:multi`;
        const out = await ctrd().pull(ref, { hostsDir, allPlatforms: true });
        expect(out.stdout).toContain('unpacking linux/arm64/v8');
        const check = await ctrd().check(ref);
        expect(check).toMatchObject({ digest: imageByTag(layout, 'multi').digest, complete: true });
      }
    });

    it('skopeo copies the index back into an OCI layout unchanged', async () => {
      const back = join(work, 'copied-back');
      await skopeoCopyFromRegistry(`${reg().host}/oci:multi`, back, 'multi');
      const index = JSON.parse(await readFile(join(back, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
      expect(index.manifests.map((m) => m.digest)).toEqual([imageByTag(oci, 'multi').digest]);
    });

    it('skopeo reads through a registries.conf mirror while the real location is dead', async () => {
      const conf = join(work, 'registries.conf');
      await writeRegistriesConf(conf, [{ prefix: 'upstream.test', location: '127.0.0.1:9', mirrors: [reg().host] }]);
      const raw = await skopeoInspectRaw('docker://upstream.test/oci:single', [], { registriesConf: conf });
      expect(sha256Digest(raw)).toBe(imageByTag(oci, 'single').digest);
    });
  });

  describe('with an htpasswd docker-registry', () => {
    const alice: Credentials = { user: 'alice', pass: 'wonder land' };
    let registry: DockerRegistry | undefined;
    const reg = (): DockerRegistry => {
      if (registry === undefined) throw new Error('registry did not start');
      return registry;
    };

    beforeAll(async () => {
      registry = await startDockerRegistry({ htpasswd: [alice] });
      await skopeoCopyToRegistry(oci.dir, 'single', `${reg().host}/private:single`, { creds: alice });
    });

    afterAll(async () => {
      await registry?.stop();
    });

    it('answers an anonymous GET /v2/ with 401 and a Basic challenge', async () => {
      const res = await fetch(`${reg().url}/v2/`);
      await res.body?.cancel();
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toMatch(/^Basic realm="registry-cache-e2e"/);
      const authed = await fetchManifest(reg().url, 'private', 'single', { credentials: alice });
      expect(authed.digest).toBe(imageByTag(oci, 'single').digest);
    });

    it('ctr pulls with --user and fails without it', async () => {
      const hostsDir = join(work, 'certs-auth');
      await writeHostsToml(hostsDir, reg().host, { server: DEAD_SERVER, mirrors: [{ url: reg().url }] });
      const ref = `${reg().host}/private:single`;
      // Without credentials the mirror's 401 sends ctr on to the dead server, and the pull fails.
      await expect(ctrd().pull(ref, { hostsDir })).rejects.toThrow(/401 Unauthorized/);
      await ctrd().pull(ref, { hostsDir, user: alice });
      expect(await ctrd().check(ref)).toMatchObject({ digest: imageByTag(oci, 'single').digest, complete: true });
      // ctr only sends credentials after a challenge, so the tag HEAD is seen first as 401, then as 200.
      const isCtrHead = (r: AccessLogEntry): boolean => r.userAgent.startsWith('containerd') && r.method === 'HEAD';
      const served = await reg().waitForRequests((all) => all.some((r) => isCtrHead(r) && r.status === 200));
      expect(served.filter(isCtrHead).map((r) => r.status)).toEqual(expect.arrayContaining([401, 200]));
    });

    it('skopeo sends credentials from an auth file keyed by host', async () => {
      const authFile = join(work, 'auth.json');
      await writeAuthFile(authFile, { [reg().host]: alice });
      const raw = await skopeoInspectRaw(`docker://${reg().host}/private:single`, ['--authfile', authFile]);
      expect(sha256Digest(raw)).toBe(imageByTag(oci, 'single').digest);
    });
  });
});
