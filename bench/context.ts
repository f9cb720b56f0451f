import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { startDockerRegistry, type DockerRegistry } from '../test/support/docker-registry.js';
import { imageByTag, makeOciLayout, type ImageDescription, type ImageSpec, type OciLayoutDescription } from '../test/support/make-image.js';
import { pushImage, type Credentials } from '../test/support/registry-client.js';
import { makeTempDir, removeTempDir } from '../test/support/temp-dir.js';
import { forEachLimited } from './clients.js';
import type { BenchSettings } from './settings.js';
import { registryLastResort, startCache, startPeer, type CacheOptions, type ManagedServer } from './systems.js';
import { own, type Teardown } from './teardown.js';

/** An image pushed to the upstream: where it lives and everything in it. */
export interface PushedImage {
  repo: string;
  tag: string;
  image: ImageDescription;
}

/** The synthesized images, by role. */
export interface BenchImages {
  layout: OciLayoutDescription;
  small: PushedImage;
  medium: PushedImage;
  herd: PushedImage;
  warm: PushedImage;
  manyLayers: PushedImage;
  multi: PushedImage;
  /** One set of never-requested images per load-test repetition: the "some cold" part of the mix. */
  cold: PushedImage[];
  /** The pull-limit scenario's 20 images (empty unless it is selected). */
  pullLimit: PushedImage[];
  /** The rollout scenario's image (undefined unless it is selected). */
  rollout: PushedImage | undefined;
  /** One image of `warmBlob.clients` layers: a different stored blob for each concurrent client (warm-blob only). */
  parallel: PushedImage | undefined;
  /** The realistic image `ctr images pull` fetches and unpacks (ctr-pull only). */
  ctr: PushedImage | undefined;
}

/** Everything a scenario may use. Scenarios warm what they need themselves, so any subset can run alone. */
export interface BenchContext {
  settings: BenchSettings;
  images: BenchImages;
  upstream: DockerRegistry;
  /** The peer: docker-registry in proxy mode in front of the upstream. */
  peer: ManagedServer;
  /** registry-cache in front of the upstream (NeverVerify, tagTtl 0s, logLevel warn). */
  cache: ManagedServer;
  teardown: Teardown;
  tmpRoot: string;
  /** Node flags every registry-cache process gets (`--cpu-prof …` under `--profile`). */
  cacheNodeFlags: string[];
  log(line: string): void;
  /** Starts another registry-cache with config overrides; the caller destroys it. */
  startCacheVariant(name: string, options: Partial<CacheOptions>): Promise<ManagedServer>;
}

/** What is selected, so setup only builds what will be used. */
export interface SetupNeeds {
  pullLimit: boolean;
  rollout: boolean;
  /** The warm-blob scenario's image of one layer per concurrent client. */
  parallelBlobs: boolean;
  /** The ctr-pull scenario's image. */
  ctrImage: boolean;
}

/** Credentials of the htpasswd upstream of the credentials scenario. */
export const AUTH_USER: Credentials = { user: 'bench', pass: 'bench-secret' };

const REPO_PREFIX = 'bench';

/** Synthesizes every image into one OCI layout under `dir`. */
export async function synthesizeImages(dir: string, settings: BenchSettings, needs: SetupNeeds): Promise<BenchImages> {
  const s = settings.sizes;
  const specs: Array<ImageSpec & { role: string; repo: string }> = [
    { role: 'small', repo: 'img-1m', tag: 'small', layers: [{ sizeBytes: s.small, seed: 'small' }] },
    { role: 'medium', repo: 'img-32m', tag: 'medium', layers: [{ sizeBytes: s.medium, seed: 'medium' }] },
    { role: 'herd', repo: 'img-256m', tag: 'herd', layers: [{ sizeBytes: s.herd, seed: 'herd' }] },
    { role: 'warm', repo: 'img-1g', tag: 'warm', layers: [{ sizeBytes: s.warm, seed: 'warm' }] },
    {
      role: 'manyLayers',
      repo: 'layers-40',
      tag: 'many',
      layers: Array.from({ length: s.manyLayers }, (_, i) => ({ sizeBytes: s.manyLayer, seed: `many-${i}` })),
    },
    {
      role: 'multi',
      repo: 'multi-arch',
      tag: 'multi',
      platforms: [
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 'arm64', variant: 'v8' },
      ],
      layers: [{ sizeBytes: s.multiLayer, seed: 'multi' }],
    },
  ];
  for (let r = 0; r < settings.load.reps; r++) {
    specs.push({
      role: 'cold',
      repo: `cold-${r + 1}`,
      tag: `cold-${r + 1}`,
      layers: Array.from({ length: settings.load.coldLayers }, (_, i) => ({ sizeBytes: settings.load.coldLayer, seed: `cold-${r}-${i}` })),
    });
  }
  if (needs.pullLimit) {
    const p = settings.pullLimit;
    for (let i = 0; i < p.images; i++) {
      specs.push({
        role: 'pullLimit',
        repo: `pl-${i + 1}`,
        tag: `pl-${i + 1}`,
        layers: Array.from({ length: p.layers }, (_, j) => ({ sizeBytes: p.layer, seed: `pl-${i}-${j}` })),
      });
    }
  }
  if (needs.rollout) {
    const r = settings.rollout;
    specs.push({ role: 'rollout', repo: 'rollout', tag: 'rollout', layers: Array.from({ length: r.layers }, (_, i) => ({ sizeBytes: r.layer, seed: `rollout-${i}` })) });
  }
  if (needs.parallelBlobs) {
    const w = settings.warmBlob;
    specs.push({
      role: 'parallel',
      repo: `blobs-${w.clients}`,
      tag: 'parallel',
      layers: Array.from({ length: w.clients }, (_, i) => ({ sizeBytes: w.parallelBlob, seed: `parallel-${i}` })),
    });
  }
  if (needs.ctrImage) {
    specs.push({
      role: 'ctr',
      repo: 'app-5-layers',
      tag: 'ctr',
      layers: settings.ctrPull.layers.map((l, i) => ({ sizeBytes: l.bytes, files: l.files, seed: `ctr-${i}` })),
    });
  }
  const layout = await makeOciLayout(dir, { mediaTypes: 'oci', images: specs.map(({ tag, platforms, layers }) => ({ tag, layers, ...(platforms ? { platforms } : {}) })) });
  const pushed = (spec: { repo: string; tag: string }): PushedImage => ({
    repo: `${REPO_PREFIX}/${spec.repo}`,
    tag: spec.tag,
    image: imageByTag(layout, spec.tag),
  });
  const one = (role: string): PushedImage => {
    const spec = specs.find((x) => x.role === role);
    if (!spec) throw new Error(`no image for ${role}`);
    return pushed(spec);
  };
  return {
    layout,
    small: one('small'),
    medium: one('medium'),
    herd: one('herd'),
    warm: one('warm'),
    manyLayers: one('manyLayers'),
    multi: one('multi'),
    cold: specs.filter((x) => x.role === 'cold').map(pushed),
    pullLimit: specs.filter((x) => x.role === 'pullLimit').map(pushed),
    rollout: needs.rollout ? one('rollout') : undefined,
    parallel: needs.parallelBlobs ? one('parallel') : undefined,
    ctr: needs.ctrImage ? one('ctr') : undefined,
  };
}

/** Every image of `images`, for pushing. */
export function allImages(images: BenchImages): PushedImage[] {
  const optional = [images.rollout, images.parallel, images.ctr].filter((i): i is PushedImage => i !== undefined);
  return [images.small, images.medium, images.herd, images.warm, images.manyLayers, images.multi, ...images.cold, ...images.pullLimit, ...optional];
}

/** Pushes images to a registry, three at a time (the big ones dominate; more would only contend for the disk). */
export async function pushAll(registryUrl: string, layout: OciLayoutDescription, images: PushedImage[], credentials?: Credentials): Promise<void> {
  await forEachLimited(images, 3, async (img) => {
    await pushImage(registryUrl, img.repo, layout, img.tag, credentials ? { credentials } : {});
  });
}

/** Starts the upstream, pushes the images, starts the peer and registry-cache; registers all of it for teardown. */
export async function setUp(
  settings: BenchSettings,
  needs: SetupNeeds,
  teardown: Teardown,
  cacheNodeFlags: string[],
  log: (line: string) => void,
): Promise<BenchContext> {
  const tmpRoot = await makeTempDir('rc-bench-');
  await own(teardown, `bench temp dir ${tmpRoot}`, () => removeTempDir(tmpRoot));
  teardown.lastResort(tmpRoot, () => rmSync(tmpRoot, { recursive: true, force: true }));
  let t = Date.now();
  log(`synthesizing images (${settings.mode})`);
  const images = await synthesizeImages(join(tmpRoot, 'layout'), settings, needs);
  log(`  done in ${((Date.now() - t) / 1000).toFixed(1)} s`);
  const upstream = await startDockerRegistry();
  await own(teardown, `upstream docker-registry ${upstream.url}`, async () => {
    await upstream.stop();
    teardown.lastResort(upstream.rootDir, undefined);
  });
  teardown.lastResort(upstream.rootDir, registryLastResort(upstream.rootDir));
  t = Date.now();
  log(`pushing images to the upstream ${upstream.url}`);
  await pushAll(upstream.url, images.layout, allImages(images));
  log(`  done in ${((Date.now() - t) / 1000).toFixed(1)} s`);
  const peer = await startPeer({ remoteUrl: upstream.url }, teardown);
  const cache = await startCache({ registryHost: upstream.host, upstreamUrl: upstream.url, nodeFlags: cacheNodeFlags }, teardown);
  log(`peer ${peer.url} (pid ${peer.pid()}), registry-cache ${cache.url} (pid ${cache.pid()})`);
  return {
    settings,
    images,
    upstream,
    peer,
    cache,
    teardown,
    tmpRoot,
    cacheNodeFlags,
    log,
    startCacheVariant: (name, options) =>
      startCache({ name, registryHost: upstream.host, upstreamUrl: upstream.url, nodeFlags: cacheNodeFlags, ...options }, teardown),
  };
}
