import { createWriteStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { pack } from 'tar-stream';
import { afterEach, describe, expect, it } from 'vitest';
import { preloadImage } from '../../src/preload/preload.js';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage, sha256, type FakeImage } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';
import { writeOciLayout } from '../support/oci-layout.js';
import { pullLikeContainerd } from '../support/registry-auth.js';
import { runCli } from '../support/cli.js';

async function writeTar(file: string, entries: { name: string; data: Buffer }[]): Promise<void> {
  const p = pack();
  const done = pipeline(Readable.from(p as AsyncIterable<Buffer>), createWriteStream(file));
  for (const e of entries) {
    await new Promise<void>((resolve, reject) => p.entry({ name: e.name, size: e.data.length }, e.data, (err) => (err ? reject(err) : resolve())));
  }
  p.finalize();
  await done;
}

function ociArchiveEntries(image: FakeImage, refName: string): { name: string; data: Buffer }[] {
  return [
    { name: 'oci-layout', data: Buffer.from('{"imageLayoutVersion":"1.0.0"}') },
    ...image.blobs.map((b) => ({ name: `blobs/sha256/${b.digest.slice(7)}`, data: b.bytes })),
    { name: `blobs/sha256/${image.manifestDigest.slice(7)}`, data: image.manifest },
    {
      name: 'index.json',
      data: Buffer.from(
        JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: image.mediaType, digest: image.manifestDigest, size: image.manifest.length, annotations: { 'org.opencontainers.image.ref.name': refName } }] }),
      ),
    },
  ];
}

describe('registry-cache preload', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function setup(policy = 'AlwaysVerify'): Promise<{ upstream: FakeUpstream; cache: TestCache; work: string }> {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    const cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: policy });
    cleanup.push(() => cache.stop());
    const work = await mkdtemp(join(tmpdir(), 'rc-preload-'));
    cleanup.push(() => rm(work, { recursive: true, force: true }));
    return { upstream, cache, work };
  }

  it('imports an OCI archive, verified, served by tag without contacting the upstream under NeverVerifyPreloadedImages', async () => {
    const { upstream, cache, work } = await setup('NeverVerifyPreloadedImages');
    const image = makeImage([3000, 9000]);
    await writeTar(join(work, 'image.tar'), ociArchiveEntries(image, `${upstream.host}/tools/app:1.0`));
    const result = await preloadImage(join(work, 'image.tar'), undefined, cache.services);
    expect(result.images).toEqual([{ digest: image.manifestDigest, mediaType: image.mediaType, name: `${upstream.host}/tools/app:1.0` }]);
    const res = await call(`${cache.url}/v2/tools/app/manifests/${image.manifestDigest}?ns=${upstream.host}`);
    expect(res.status).toBe(200);
    const blob = await call(`${cache.url}/v2/tools/app/blobs/${image.blobs[2]?.digest}?ns=${upstream.host}`);
    expect(sha256(blob.body)).toBe(image.blobs[2]?.digest);
    expect(upstream.requests).toHaveLength(0);
  });

  it('refuses an archive whose blob does not match its digest, storing nothing of it', async () => {
    const { cache, work } = await setup();
    const image = makeImage([3000]);
    const entries = ociArchiveEntries(image, 'x');
    const tampered = entries.map((e) => (e.name.endsWith(image.blobs[1]?.digest.slice(7) ?? '') ? { ...e, data: Buffer.from(e.data).fill(7, 0, 10) } : e));
    await writeTar(join(work, 'bad.tar'), tampered);
    await expect(preloadImage(join(work, 'bad.tar'), 'app:1', cache.services)).rejects.toThrow(/hashes to/);
    expect(cache.services.metadata.getBlob(image.blobs[1]?.digest as string)).toBeUndefined();
  });

  it('imports a docker save archive (legacy layout) as a Docker schema2 image', async () => {
    const { upstream, cache, work } = await setup('NeverVerifyPreloadedImages');
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
    const layer = Buffer.alloc(10_240, 3);
    const configName = `${sha256(config).slice(7)}.json`;
    await writeTar(join(work, 'save.tar'), [
      { name: configName, data: config },
      { name: 'abc123/layer.tar', data: layer },
      { name: 'manifest.json', data: Buffer.from(JSON.stringify([{ Config: configName, RepoTags: [`${upstream.host}/legacy/app:2`], Layers: ['abc123/layer.tar'] }])) },
    ]);
    const result = await preloadImage(join(work, 'save.tar'), undefined, cache.services);
    expect(result.images[0]?.name).toBe(`${upstream.host}/legacy/app:2`);
    const res = await call(`${cache.url}/v2/legacy/app/manifests/${result.images[0]?.digest}?ns=${upstream.host}`);
    expect(res.headers['content-type']).toBe('application/vnd.docker.distribution.manifest.v2+json');
    const manifest = JSON.parse(res.body.toString()) as { layers: { digest: string }[]; config: { digest: string } };
    expect(manifest.config.digest).toBe(sha256(config));
    expect(manifest.layers[0]?.digest).toBe(sha256(layer));
  });

  it('serves a preloaded public image to an anonymous client under AlwaysVerify after an anonymous check', async () => {
    const { upstream, cache, work } = await setup('AlwaysVerify');
    const image = makeImage([1000]);
    upstream.push('library/open', '1', image);
    await writeOciLayout(join(work, 'layout'), image);
    await preloadImage(join(work, 'layout'), `${upstream.host}/library/open:1`, cache.services);
    const url = `${cache.url}/v2/library/open/manifests/${image.manifestDigest}?ns=${upstream.host}`;
    // A client without credentials is checked upstream anonymously at once (no challenge first), exactly as for an
    // image the cache does not hold: what it sees must not depend on what is stored. The check is the GET by digest.
    const { first, final } = await pullLikeContainerd(url, upstream.host, 'library/open');
    expect(first.status).toBe(200);
    expect(final.status).toBe(200);
    expect(upstream.requests.map((r) => r.method)).toEqual(['GET']);
    expect(cache.services.records.get(upstream.host, 'library/open', image.manifestDigest)?.nodePodsAccessible).toBe(true);
    expect((await call(url)).status).toBe(200);
  });

  it('runs from the CLI, and `records` prints hash prefixes only', async () => {
    const { upstream, work } = await setup();
    const image = makeImage([2000]);
    await writeOciLayout(join(work, 'layout'), image);
    const storage = join(work, 'store');
    const configFile = join(work, 'config.yaml');
    await writeFile(configFile, `storage: ${storage}\nregistries:\n  "${upstream.host}": { url: "${upstream.url}" }\ndefaultRegistry: "${upstream.host}"\n`);
    const preload = await runCli(['preload', join(work, 'layout'), '--name', `${upstream.host}/cli/app:3`, '--config', configFile]);
    expect(preload.code).toBe(0);
    expect(preload.stdout).toContain(`preloaded ${upstream.host}/cli/app:3 ${image.manifestDigest}`);
    const json = await runCli(['records', '--json', '--config', configFile]);
    expect(json.code).toBe(0);
    const rows = JSON.parse(json.stdout) as { image: string; digest: string; preloaded: boolean }[];
    expect(rows).toContainEqual(expect.objectContaining({ image: `${upstream.host}/cli/app`, digest: image.manifestDigest, preloaded: true }));
    const table = await runCli(['records', '--image', `${upstream.host}/cli/app`, '--config', configFile]);
    expect(table.stdout.split('\n')[0]).toMatch(/^IMAGE\s+DIGEST\s+PULLED BY\s+PRELOADED\s+LAST VERIFIED/);
    expect(table.stdout).toContain('yes');
    const bad = await runCli(['preload', join(work, 'nope'), '--config', configFile]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('nope');
  });
  it('serves a tag given by preload --name while the upstream is up and does not know that tag (air-gapped preload)', async () => {
    const { upstream, cache, work } = await setup('NeverVerifyPreloadedImages');
    const image = makeImage([1500]);
    await writeOciLayout(join(work, 'layout'), image);
    await preloadImage(join(work, 'layout'), `${upstream.host}/airgap/app:1.0`, cache.services);
    for (let i = 0; i < 2; i++) {
      const res = await call(`${cache.url}/v2/airgap/app/manifests/1.0?ns=${upstream.host}`);
      expect(res.status).toBe(200);
      expect(res.headers['docker-content-digest']).toBe(image.manifestDigest);
    }
    // The upstream was asked (tagTtl 0s) and answered 404: it stays the judge of tags it knows, not of this one.
    expect(upstream.count('HEAD', /\/v2\/airgap\/app\/manifests\/1\.0$/)).toBeGreaterThanOrEqual(1);
    // A pulled (not preloaded) tag the upstream no longer knows is still gone.
    const pulled = makeImage([700]);
    upstream.push('airgap/other', '2.0', pulled);
    expect((await call(`${cache.url}/v2/airgap/other/manifests/2.0?ns=${upstream.host}`)).status).toBe(200);
    upstream.fault = (req) => (req.path === '/v2/airgap/other/manifests/2.0' ? { kind: 'status', status: 404 } : undefined);
    expect((await call(`${cache.url}/v2/airgap/other/manifests/2.0?ns=${upstream.host}`)).status).toBe(404);
  });
  it('preload --name refuses a registry the server does not serve and puts a short name under defaultRegistry, saying so', async () => {
    const { upstream, work } = await setup();
    const image = makeImage([800]);
    await writeOciLayout(join(work, 'layout'), image);
    const configFile = join(work, 'config.yaml');
    // defaultRegistry is not docker.io here: a short name must land where the server routes it.
    await writeFile(configFile, `storage: ${join(work, 'store')}\nregistries:\n  "${upstream.host}": { url: "${upstream.url}" }\ndefaultRegistry: "${upstream.host}"\n`);
    const refused = await runCli(['preload', join(work, 'layout'), '--name', 'example.com/x:1', '--config', configFile]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('example.com is not configured');
    expect(refused.stderr).toContain(upstream.host);
    const short = await runCli(['preload', join(work, 'layout'), '--name', 'tools/short:1', '--config', configFile]);
    expect(short.code).toBe(0);
    expect(short.stdout).toContain(`preloaded ${upstream.host}/tools/short:1 ${image.manifestDigest}`);
    expect(short.stderr).toContain(`tools/short:1 has no registry; imported as ${upstream.host}/tools/short:1 (defaultRegistry)`);
    const records = JSON.parse((await runCli(['records', '--json', '--config', configFile])).stdout) as { image: string }[];
    expect(records.map((r) => r.image)).toEqual([`${upstream.host}/tools/short`]);
  });
});

