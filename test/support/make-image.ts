import { createCipheriv, createHash, randomBytes, type Hash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { copyFile, link, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';

/** Which family of media types an image uses: OCI, or Docker schema 2 / manifest list. */
export type MediaTypeFamily = 'oci' | 'docker';

/** Media types by family, so tests can assert on them without retyping strings. */
export const MEDIA_TYPES = {
  oci: {
    manifest: 'application/vnd.oci.image.manifest.v1+json',
    index: 'application/vnd.oci.image.index.v1+json',
    config: 'application/vnd.oci.image.config.v1+json',
    layer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  },
  docker: {
    manifest: 'application/vnd.docker.distribution.manifest.v2+json',
    index: 'application/vnd.docker.distribution.manifest.list.v2+json',
    config: 'application/vnd.docker.container.image.v1+json',
    layer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  },
} as const;

/** The OCI layout annotation that names a tag in index.json. */
export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';

/** A target platform for one image manifest. */
export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

/** One layer to synthesize: `sizeBytes` of pseudo-random file content derived from `seed`. */
export interface LayerSpec {
  sizeBytes: number;
  seed: string | number;
  /** How many files the content is split across; defaults to 1. */
  files?: number;
  /**
   * zlib level; defaults to 0 (stored blocks, still valid gzip) because the content is random and cannot shrink,
   * which makes big layers about 4x faster to build than level 1.
   */
  gzipLevel?: number;
}

/** One tag to synthesize; more than one platform makes it an index (manifest list). */
export interface ImageSpec {
  tag: string;
  /** Defaults to linux/amd64 alone (a plain manifest, no index). */
  platforms?: Platform[];
  layers: LayerSpec[];
  /** config.Cmd; defaults to ["/bin/sh"]. */
  cmd?: string[];
}

/** Everything to put into one OCI layout directory. */
export interface LayoutSpec {
  images: ImageSpec[];
  mediaTypes: MediaTypeFamily;
}

/** A content descriptor: enough to fetch and verify a blob or manifest. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

/** A gzip'd layer blob plus the digest and size of its uncompressed tar. */
export interface LayerDescription extends Descriptor {
  diffId: string;
  uncompressedSize: number;
}

/** A single-platform image manifest with its config and layers. */
export interface ManifestDescription extends Descriptor {
  platform: Platform;
  config: Descriptor;
  layers: LayerDescription[];
}

/** One tag: its top-level descriptor (a manifest, or an index for multi-platform) and everything below it. */
export interface ImageDescription extends Descriptor {
  tag: string;
  isIndex: boolean;
  /** Per-platform manifests; for a single-platform tag this is the top manifest itself. */
  manifests: ManifestDescription[];
  /** Every config and layer blob the tag references, without duplicates. */
  blobs: Descriptor[];
}

/** What makeOciLayout wrote. */
export interface OciLayoutDescription {
  dir: string;
  mediaTypes: MediaTypeFamily;
  images: ImageDescription[];
}

/** Options shared by the I/O functions in this module. */
export interface MakeImageOptions {
  signal?: AbortSignal;
}

const CHUNK_BYTES = 64 * 1024;
const DEFAULT_PLATFORM: Platform = { os: 'linux', architecture: 'amd64' };
const EPOCH = '1970-01-01T00:00:00Z';

/** Returns "sha256:<hex>" of `data`. */
export function sha256Digest(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** The path of a blob inside an OCI layout. */
export function layoutBlobPath(layoutDir: string, digest: string): string {
  const [algorithm, hex] = digest.split(':');
  if (algorithm !== 'sha256' || hex === undefined || !/^[0-9a-f]{64}$/.test(hex)) {
    throw new Error(`not a sha256 digest: ${digest}`);
  }
  return join(layoutDir, 'blobs', 'sha256', hex);
}

/** Reads a manifest, index or config from an OCI layout (never use it for big layers). */
export async function readLayoutBlob(layoutDir: string, digest: string): Promise<Buffer> {
  return readFile(layoutBlobPath(layoutDir, digest));
}

/** Finds a tag in a layout description, throwing if it is not there. */
export function imageByTag(layout: OciLayoutDescription, tag: string): ImageDescription {
  const image = layout.images.find((i) => i.tag === tag);
  if (image === undefined) throw new Error(`no tag ${tag} in ${layout.dir}`);
  return image;
}

/** "os/arch[/variant]", the form containerd and skopeo print. */
export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter((s) => s !== undefined).join('/');
}

/**
 * Writes a deterministic OCI image layout to `dir` (created if needed) and describes every manifest and blob in it.
 * With mediaTypes 'docker' the blobs use Docker media types; skopeo cannot read those from a layout, so push them
 * with pushImage (registry-client.ts) or writeDirTransport + skopeo.
 */
export async function makeOciLayout(dir: string, spec: LayoutSpec, opts: MakeImageOptions = {}): Promise<OciLayoutDescription> {
  const types = MEDIA_TYPES[spec.mediaTypes];
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  const images: ImageDescription[] = [];
  for (const image of spec.images) {
    const platforms = image.platforms ?? [DEFAULT_PLATFORM];
    if (platforms.length === 0) throw new Error(`image ${image.tag} has an empty platform list`);
    const manifests: ManifestDescription[] = [];
    for (const platform of platforms) {
      // Per-platform seeds give every platform different layer bytes, as real multi-arch images have.
      const seedSuffix = platforms.length > 1 ? `@${formatPlatform(platform)}` : '';
      const layers: LayerDescription[] = [];
      for (const layer of image.layers) {
        layers.push(await writeLayer(dir, { ...layer, seed: `${layer.seed}${seedSuffix}` }, types.layer, opts.signal));
      }
      const config = await writeJsonBlob(dir, types.config, imageConfig(image, platform, layers));
      const manifest = await writeJsonBlob(dir, types.manifest, {
        schemaVersion: 2,
        mediaType: types.manifest,
        config: descriptorOf(config),
        layers: layers.map(descriptorOf),
      });
      manifests.push({ ...manifest, platform, config, layers });
    }
    const first = manifests[0];
    if (first === undefined) throw new Error('unreachable: no manifests');
    const top =
      manifests.length === 1
        ? descriptorOf(first)
        : await writeJsonBlob(dir, types.index, {
            schemaVersion: 2,
            mediaType: types.index,
            manifests: manifests.map((m) => ({ ...descriptorOf(m), platform: platformJson(m.platform) })),
          });
    const blobs = new Map<string, Descriptor>();
    for (const m of manifests) {
      for (const b of [m.config, ...m.layers]) blobs.set(b.digest, descriptorOf(b));
    }
    images.push({ ...top, tag: image.tag, isIndex: manifests.length > 1, manifests, blobs: [...blobs.values()] });
  }
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.oci.index,
      manifests: images.map((i) => ({ ...descriptorOf(i), annotations: { [REF_NAME_ANNOTATION]: i.tag } })),
    }),
  );
  return { dir, mediaTypes: spec.mediaTypes, images };
}

/**
 * Copies one tag of a layout into skopeo's `dir:` transport format, the way to feed Docker media types to skopeo 1.9.
 * Index children go to `<hex>.manifest.json`, which is where containers/image looks for instance manifests.
 */
export async function writeDirTransport(layout: OciLayoutDescription, tag: string, outDir: string): Promise<void> {
  const image = imageByTag(layout, tag);
  await mkdir(outDir, { recursive: true });
  await writeFile(join(outDir, 'version'), 'Directory Transport Version: 1.1\n');
  await copyFile(layoutBlobPath(layout.dir, image.digest), join(outDir, 'manifest.json'));
  if (image.isIndex) {
    for (const m of image.manifests) {
      await copyFile(layoutBlobPath(layout.dir, m.digest), join(outDir, `${hexOf(m.digest)}.manifest.json`));
    }
  }
  for (const blob of image.blobs) {
    const target = join(outDir, hexOf(blob.digest));
    await rm(target, { force: true });
    // Hard links keep big layers from being copied; fall back when the dirs are on different filesystems.
    await link(layoutBlobPath(layout.dir, blob.digest), target).catch(() =>
      copyFile(layoutBlobPath(layout.dir, blob.digest), target),
    );
  }
}

function hexOf(digest: string): string {
  // layoutBlobPath validates the digest, so the remainder is the 64-hex encoded part.
  layoutBlobPath('', digest);
  return digest.slice('sha256:'.length);
}

function descriptorOf(d: Descriptor): Descriptor {
  return { mediaType: d.mediaType, digest: d.digest, size: d.size };
}

function platformJson(p: Platform): Record<string, string> {
  return p.variant === undefined
    ? { architecture: p.architecture, os: p.os }
    : { architecture: p.architecture, os: p.os, variant: p.variant };
}

function imageConfig(image: ImageSpec, platform: Platform, layers: LayerDescription[]): unknown {
  return {
    created: EPOCH,
    ...platformJson(platform),
    config: {
      Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      Cmd: image.cmd ?? ['/bin/sh'],
      // The tag label makes configs (and so manifests) differ between tags that share layers.
      Labels: { 'registry-cache.test.tag': image.tag },
    },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: image.layers.map((l) => ({ created: EPOCH, created_by: `make-image layer seed=${l.seed} size=${l.sizeBytes}` })),
  };
}

async function writeJsonBlob(dir: string, mediaType: string, value: unknown): Promise<Descriptor> {
  const bytes = Buffer.from(JSON.stringify(value));
  const digest = sha256Digest(bytes);
  await writeFile(layoutBlobPath(dir, digest), bytes);
  return { mediaType, digest, size: bytes.length };
}

/** Counts and hashes the bytes flowing through it. */
class HashingTap extends Transform {
  readonly hash: Hash = createHash('sha256');
  bytes = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    callback(null, chunk);
  }
}

async function writeLayer(dir: string, layer: LayerSpec, mediaType: string, signal?: AbortSignal): Promise<LayerDescription> {
  const raw = new HashingTap();
  const gz = new HashingTap();
  const tmp = join(dir, `.tmp-layer-${randomBytes(6).toString('hex')}`);
  try {
    const gzip = createGzip({ level: layer.gzipLevel ?? 0 });
    await pipeline(Readable.from(tarStream(layer)), raw, gzip, gz, createWriteStream(tmp), { signal });
    const digest = `sha256:${gz.hash.digest('hex')}`;
    const target = layoutBlobPath(dir, digest);
    const existing = await stat(target).catch(() => undefined);
    if (existing === undefined) await rename(tmp, target);
    return { mediaType, digest, size: gz.bytes, diffId: `sha256:${raw.hash.digest('hex')}`, uncompressedSize: raw.bytes };
  } finally {
    await rm(tmp, { force: true });
  }
}

/** Streams a ustar archive with one directory and `files` regular files of keystream content, all with mtime 0. */
async function* tarStream(layer: LayerSpec): AsyncGenerator<Buffer> {
  const files = Math.max(1, layer.files ?? 1);
  const dirName = `layer-${createHash('sha256').update(String(layer.seed)).digest('hex').slice(0, 12)}`;
  yield tarHeader(`${dirName}/`, 0, '5', 0o755);
  for (let i = 0; i < files; i++) {
    const size = Math.floor(layer.sizeBytes / files) + (i < layer.sizeBytes % files ? 1 : 0);
    yield tarHeader(`${dirName}/file-${i}.bin`, size, '0', 0o644);
    yield* pseudoRandomBytes(`${layer.seed}/${i}`, size);
    if (size % 512 !== 0) yield Buffer.alloc(512 - (size % 512));
  }
  // Two zero blocks end the archive.
  yield Buffer.alloc(1024);
}

/** Deterministic bytes: AES-128-CTR keystream keyed by the seed (fast, and needs no state beyond the cipher). */
function* pseudoRandomBytes(seed: string, size: number): Generator<Buffer> {
  const key = createHash('sha256').update(`make-image:${seed}`).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(CHUNK_BYTES);
  for (let left = size; left > 0; left -= CHUNK_BYTES) {
    yield cipher.update(left >= CHUNK_BYTES ? zeros : zeros.subarray(0, left));
  }
}

function tarHeader(name: string, size: number, type: '0' | '5', mode: number): Buffer {
  if (Buffer.byteLength(name) > 100) throw new Error(`tar name too long: ${name}`);
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, 'utf8');
  writeOctal(h, mode, 100, 8);
  writeOctal(h, 0, 108, 8); // uid
  writeOctal(h, 0, 116, 8); // gid
  writeOctal(h, size, 124, 12);
  writeOctal(h, 0, 136, 12); // mtime
  h.write(type, 156, 1, 'ascii');
  h.write('ustar\0', 257, 6, 'ascii');
  h.write('00', 263, 2, 'ascii');
  h.write('root', 265, 32, 'ascii');
  h.write('root', 297, 32, 'ascii');
  writeOctal(h, 0, 329, 8); // devmajor
  writeOctal(h, 0, 337, 8); // devminor
  // The checksum is computed with its own field read as spaces.
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of h) sum += byte;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
  return h;
}

function writeOctal(buf: Buffer, value: number, offset: number, length: number): void {
  const digits = value.toString(8);
  if (digits.length > length - 1) throw new Error(`tar field overflow: ${value}`);
  buf.write(`${digits.padStart(length - 1, '0')}\0`, offset, length, 'ascii');
}
