import { createReadStream } from 'node:fs';
import { open, readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { extract } from 'tar-stream';
import type { Metadata } from '../db/content-index.js';
import { digestOf, parseDigest } from '../oci/digest.js';
import { MEDIA_TYPES, isIndexMediaType, manifestMediaType, type ParsedManifestJson } from '../oci/media-types.js';
import { assertRepositoryName, assertTag, canonicalRegistry, canonicalRepository, looksLikeRegistryHost, parseImageReference, type ImageName } from '../oci/reference.js';
import { manifestRefs, MAX_MANIFEST_BYTES } from '../oci/manifest.js';
import type { PullRecords } from '../db/pull-records.js';
import type { BlobStore } from '../store/blob-store.js';
import { importBlob } from './import-blob.js';

/** What a preload imported. */
export interface PreloadResult {
  /** Top-level manifests (or indexes) and the names they were tagged with. */
  images: { digest: string; mediaType: string; name?: string }[];
  blobs: number;
  bytes: number;
}

/** Progress callback: bytes processed so far and the total when known. */
export type Progress = (done: number, total: number) => void;

interface Deps {
  store: BlobStore;
  metadata: Metadata;
  records: PullRecords;
}

const REF_NAME = 'org.opencontainers.image.ref.name';
const LEGACY_LAYER = 'application/vnd.docker.image.rootfs.diff.tar';
const DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json';

/**
 * Imports an image as pre-pulled: an OCI layout directory, an OCI archive (tar of a layout) or a `docker save`
 * tar. Every blob is verified by digest; manifests and blobs are marked preloaded (no pull record).
 */
export async function preloadImage(source: string, name: string | PreloadName | undefined, deps: Deps, progress?: Progress): Promise<PreloadResult> {
  const info = await stat(source);
  const tagged = name === undefined ? undefined : typeof name === 'string' ? parseName(name) : name;
  const state: ImportState = { blobs: new Map(), jsonFiles: new Map(), bytes: 0 };
  if (info.isDirectory()) await importLayoutDirectory(source, deps, state, progress);
  else {
    await assertTarArchive(source);
    await importTar(source, info.size, deps, state, progress);
  }

  let tops: { digest: string; refName?: string }[];
  if (state.jsonFiles.has('index.json')) {
    const index = JSON.parse(state.jsonFiles.get('index.json') as string) as { manifests?: { digest?: string; annotations?: Record<string, string> }[] };
    tops = (index.manifests ?? []).map((m) => ({ digest: parseDigest(String(m.digest)).value, ...(m.annotations?.[REF_NAME] ? { refName: m.annotations[REF_NAME] } : {}) }));
  } else if (state.jsonFiles.has('manifest.json')) {
    tops = await synthesizeDockerSaveManifests(state, deps);
  } else {
    throw new Error(`${source}: neither an OCI layout (index.json) nor a docker save archive (manifest.json); ${EXPECTED}`);
  }
  if (tops.length === 0) throw new Error(`${source}: holds no image`);

  const images: PreloadResult['images'] = [];
  for (const top of tops) {
    const mediaType = await registerManifestTree(top.digest, deps);
    let image: (ImageName & { tag?: string }) | undefined;
    if (tagged && (tops.length === 1 || top.refName === tagged.tag || top.refName === name || top.refName === nameOf(tagged))) image = tagged;
    else if (!tagged && top.refName && /[/:]/.test(top.refName) && top.refName.includes('/')) image = safeParse(top.refName);
    if (tagged && tops.length > 1 && !image) continue;
    const imageName = image ? `${image.registry}/${image.repository}` : undefined;
    markTree(top.digest, deps, imageName);
    if (image) {
      linkTree(top.digest, image, deps);
      if (image.tag) deps.metadata.putTag(image.registry, image.repository, image.tag, top.digest);
    }
    images.push({ digest: top.digest, mediaType, ...(imageName ? { name: image?.tag ? `${imageName}:${image.tag}` : imageName } : {}) });
  }
  if (tagged && images.length === 0) throw new Error(`${source}: no image in it is tagged ${tagged.tag ?? ''}; index.json lists ${tops.length}`);
  return { images, blobs: state.blobs.size, bytes: state.bytes };
}

const EXPECTED = 'expected an OCI layout directory, an OCI archive (.tar) or a docker save .tar';

/** Refuses what is not a tar before parsing it, saying what preload reads (the tar parser's own errors say neither). */
async function assertTarArchive(source: string): Promise<void> {
  const handle = await open(source, 'r');
  const head = Buffer.alloc(512);
  try {
    await handle.read(head, 0, 512, 0);
  } finally {
    await handle.close();
  }
  if (head[0] === 0x1f && head[1] === 0x8b) throw new Error(`${source} is gzip-compressed: preload reads an uncompressed tar (gunzip it first)`);
  // POSIX (ustar), GNU and pax tars, which is what docker save, skopeo and buildkit write, carry this magic.
  if (head.toString('latin1', 257, 262) !== 'ustar') throw new Error(`${source} is not an image archive: ${EXPECTED}`);
}

interface ImportState {
  /** Path inside the source → digest of its content. */
  blobs: Map<string, string>;
  /** Small JSON documents (index.json, manifest.json, legacy configs) by path. */
  jsonFiles: Map<string, string>;
  bytes: number;
}

/** An image name for `preload --name`, resolved as the server routes it. */
export type PreloadName = ImageName & { tag?: string };

/**
 * Resolves `preload --name` the way the server routes a request: a first component naming a configured registry is
 * that registry; one that looks like a host (`.`, `:`, `localhost`) and is not configured is refused, since no request
 * could ever reach it; anything else is a repository of `defaultRegistry` (not always docker.io). `note` says so.
 */
export function resolvePreloadName(name: string, registries: ReadonlySet<string>, defaultRegistry: string): { image: PreloadName; note?: string } {
  if (name.includes('@')) throw new Error(`--name ${name}: give a tag, not a digest`);
  const slash = name.indexOf('/');
  const first = slash > 0 ? name.slice(0, slash) : '';
  let registry = defaultRegistry;
  let rest = name;
  if (first && registries.has(canonicalRegistry(first))) {
    registry = canonicalRegistry(first);
    rest = name.slice(slash + 1);
  } else if (first && looksLikeRegistryHost(first)) {
    throw new Error(
      `--name ${name}: registry ${canonicalRegistry(first)} is not configured, so the server would refuse every request for this image; ` +
        `configured registries: ${[...registries].join(', ')} (add it under registries, or name the image under one of them)`,
    );
  }
  const colon = rest.lastIndexOf(':');
  const tag = colon > rest.lastIndexOf('/') ? rest.slice(colon + 1) : undefined;
  const repository = canonicalRepository(registry, tag === undefined ? rest : rest.slice(0, colon));
  assertRepositoryName(repository);
  if (tag !== undefined) assertTag(tag);
  const image: PreloadName = { registry, repository, ...(tag !== undefined ? { tag } : {}) };
  if (registry !== defaultRegistry || rest !== name) return { image };
  return {
    image,
    note:
      `--name ${name} has no registry; imported as ${nameOf(image)} (defaultRegistry), where requests without ns= or a registry ` +
      `prefix go. containerd names the registry (ns=): for an image it pulls from another registry, give that full name.`,
  };
}

function nameOf(image: PreloadName): string {
  return `${image.registry}/${image.repository}${image.tag ? `:${image.tag}` : ''}`;
}

function parseName(name: string): ImageName & { tag?: string } {
  const parsed = parseImageReference(name);
  if (parsed.digest) throw new Error(`--name ${name}: give a tag, not a digest`);
  return parsed;
}

function safeParse(ref: string): (ImageName & { tag?: string }) | undefined {
  try {
    const p = parseImageReference(ref);
    return p.digest ? undefined : p;
  } catch {
    return undefined;
  }
}

function counting(state: ImportState, total: number, progress?: Progress): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      state.bytes += chunk.length;
      progress?.(state.bytes, total);
      cb(null, chunk);
    },
  });
}

async function importLayoutDirectory(dir: string, deps: Deps, state: ImportState, progress?: Progress): Promise<void> {
  state.jsonFiles.set('index.json', await readFile(join(dir, 'index.json'), 'utf8'));
  const files: { path: string; digest: string; size: number }[] = [];
  for (const algorithm of await readdir(join(dir, 'blobs'))) {
    for (const hex of await readdir(join(dir, 'blobs', algorithm))) {
      const digest = parseDigest(`${algorithm}:${hex}`).value;
      const path = join(dir, 'blobs', algorithm, hex);
      files.push({ path, digest, size: (await stat(path)).size });
    }
  }
  const total = files.reduce((n, f) => n + f.size, 0);
  for (const f of files) {
    const { size } = await importBlob(deps.store, createReadStream(f.path).pipe(counting(state, total, progress)), f.digest);
    deps.metadata.insertBlob(f.digest, size, null);
    state.blobs.set(f.path, f.digest);
  }
}

async function importTar(file: string, total: number, deps: Deps, state: ImportState, progress?: Progress): Promise<void> {
  const ex = extract();
  const done = pipeline(createReadStream(file), counting(state, total, progress), ex);
  try {
    await readEntries();
  } catch (err) {
    // Stop reading the archive and let its pipeline settle before reporting the first error.
    ex.destroy();
    await done.catch(() => undefined);
    throw err;
  }
  await done;

  async function readEntries(): Promise<void> {
    for await (const entry of ex) {
      const path = entry.header.name.replace(/^\.\//, '');
      if (entry.header.type !== 'file') {
        entry.resume();
        continue;
      }
      const blobMatch = /^blobs\/(sha256|sha512)\/([a-f0-9]+)$/.exec(path);
      if (blobMatch) {
        const digest = parseDigest(`${blobMatch[1]}:${blobMatch[2]}`).value;
        const { size } = await importBlob(deps.store, Readable.from(entry), digest);
        deps.metadata.insertBlob(digest, size, null);
        state.blobs.set(path, digest);
      } else if (path.endsWith('.json') && (entry.header.size ?? 0) <= MAX_MANIFEST_BYTES) {
        const chunks: Buffer[] = [];
        for await (const c of entry) chunks.push(c as Buffer);
        const bytes = Buffer.concat(chunks);
        state.jsonFiles.set(path, bytes.toString('utf8'));
        // Legacy docker save: the image config is `<hex>.json`; store it as a blob too.
        if (/^[a-f0-9]{64}\.json$/.test(path)) {
          const { digest, size } = await importBlob(deps.store, Readable.from([bytes]));
          deps.metadata.insertBlob(digest, size, DOCKER_CONFIG);
          state.blobs.set(path, digest);
        }
      } else if (path.endsWith('/layer.tar') || path.endsWith('.tar')) {
        const { digest, size } = await importBlob(deps.store, Readable.from(entry));
        deps.metadata.insertBlob(digest, size, LEGACY_LAYER);
        state.blobs.set(path, digest);
      } else {
        entry.resume();
      }
    }
  }
}

/** `docker save` (pre-OCI) has no manifests: build a Docker schema2 manifest over its config and layer tars. */
async function synthesizeDockerSaveManifests(state: ImportState, deps: Deps): Promise<{ digest: string; refName?: string }[]> {
  const entries = JSON.parse(state.jsonFiles.get('manifest.json') as string) as { Config: string; RepoTags?: string[] | null; Layers: string[] }[];
  const out: { digest: string; refName?: string }[] = [];
  for (const e of entries) {
    const configDigest = state.blobs.get(e.Config);
    if (!configDigest) throw new Error(`docker save archive: config ${e.Config} missing`);
    const layers = e.Layers.map((l) => {
      const d = state.blobs.get(l);
      if (!d) throw new Error(`docker save archive: layer ${l} missing`);
      return { mediaType: LEGACY_LAYER, size: deps.metadata.getBlob(d)?.size ?? 0, digest: d };
    });
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA_TYPES.dockerManifest,
        config: { mediaType: DOCKER_CONFIG, size: deps.metadata.getBlob(configDigest)?.size ?? 0, digest: configDigest },
        layers,
      }),
    );
    const digest = digestOf(manifest);
    await deps.store.writeSmall(digest, manifest);
    deps.metadata.insertBlob(digest, manifest.length, MEDIA_TYPES.dockerManifest);
    const tag = e.RepoTags?.[0];
    out.push({ digest, ...(tag ? { refName: tag.includes('/') ? tag : `docker.io/${tag}` } : {}) });
  }
  return out;
}

/** Records a stored manifest (and, for an index, its children) in the metadata; returns its media type. */
async function registerManifestTree(digest: string, deps: Deps): Promise<string> {
  const row = deps.metadata.getBlob(digest);
  if (!row) throw new Error(`manifest ${digest} is referenced but not in the archive`);
  const bytes = await deps.store.readSmall(digest);
  const parsed = JSON.parse(bytes.toString('utf8')) as ParsedManifestJson;
  const mediaType = manifestMediaType(parsed, undefined);
  const refs = manifestRefs(parsed, mediaType);
  for (const ref of refs) {
    if (!deps.metadata.getBlob(ref.child)) throw new Error(`${digest} references ${ref.child}, which is not in the archive`);
    if (ref.kind === 'manifest') await registerManifestTree(ref.child, deps);
  }
  deps.metadata.registerManifest(digest, mediaType, refs);
  return mediaType;
}

function walk(digest: string, deps: Deps, visit: (d: string) => void): void {
  visit(digest);
  for (const ref of deps.metadata.manifestRefs(digest)) {
    if (ref.kind === 'manifest') walk(ref.child, deps, visit);
    else visit(ref.child);
  }
}

function markTree(digest: string, deps: Deps, image: string | undefined): void {
  walk(digest, deps, (d) => deps.records.markPreloaded(d, 'preload', image));
}

function linkTree(digest: string, image: ImageName, deps: Deps): void {
  walk(digest, deps, (d) => deps.metadata.linkRepository(image.registry, image.repository, d));
}

/** True when a media type is an index (re-exported for the CLI's summary). */
export const isIndex = isIndexMediaType;
