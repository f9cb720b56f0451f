import { createReadStream } from 'node:fs';
import { request } from 'undici';
import { MEDIA_TYPES, imageByTag, layoutBlobPath, readLayoutBlob, sha256Digest, type Descriptor, type OciLayoutDescription } from './make-image.js';

/** A user name and password for Basic auth. */
export interface Credentials {
  user: string;
  pass: string;
}

/** Options for pushImage. */
export interface PushOptions {
  /** Sent preemptively as Basic auth (distribution's htpasswd accepts that). */
  credentials?: Credentials;
  /** Tag to push under; defaults to the tag in the layout. */
  as?: string;
  signal?: AbortSignal;
}

/** Options for fetchManifest. */
export interface FetchManifestOptions {
  credentials?: Credentials;
  /** Accept list; defaults to MANIFEST_ACCEPT. */
  accept?: string[];
  method?: 'GET' | 'HEAD';
  signal?: AbortSignal;
}

/** A manifest as a registry served it, with the sha256 of the bytes received. */
export interface FetchedManifest {
  status: number;
  bytes: Buffer;
  /** sha256 of `bytes`, computed here. */
  digest: string;
  contentType?: string;
  /** The Docker-Content-Digest header the registry sent. */
  dockerContentDigest?: string;
}

/** Every manifest and index media type, OCI and Docker. */
export const MANIFEST_ACCEPT: readonly string[] = [
  MEDIA_TYPES.oci.manifest,
  MEDIA_TYPES.oci.index,
  MEDIA_TYPES.docker.manifest,
  MEDIA_TYPES.docker.index,
];

/** The value of an Authorization header for Basic auth. */
export function basicAuthorization(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.user}:${c.pass}`).toString('base64')}`;
}

/**
 * Pushes one tag of a layout with the distribution push API, keeping every manifest byte-identical.
 * Works for both media-type families; blobs go first, then child manifests by digest, then the top one by tag.
 */
export async function pushImage(
  registryUrl: string,
  repo: string,
  layout: OciLayoutDescription,
  tag: string,
  opts: PushOptions = {},
): Promise<void> {
  const image = imageByTag(layout, tag);
  const base = `${registryUrl}/v2/${repo}`;
  const auth: Record<string, string> = opts.credentials ? { authorization: basicAuthorization(opts.credentials) } : {};
  for (const blob of image.blobs) await pushBlob(base, layout.dir, blob, auth, opts.signal);
  if (image.isIndex) {
    for (const child of image.manifests) await putManifest(base, layout.dir, child, child.digest, auth, opts.signal);
  }
  await putManifest(base, layout.dir, image, opts.as ?? image.tag, auth, opts.signal);
}

/** GETs (or HEADs) a manifest and hashes what came back. */
export async function fetchManifest(
  registryUrl: string,
  repo: string,
  reference: string,
  opts: FetchManifestOptions = {},
): Promise<FetchedManifest> {
  const res = await request(`${registryUrl}/v2/${repo}/manifests/${reference}`, {
    method: opts.method ?? 'GET',
    headers: {
      accept: (opts.accept ?? MANIFEST_ACCEPT).join(', '),
      ...(opts.credentials ? { authorization: basicAuthorization(opts.credentials) } : {}),
    },
    signal: opts.signal,
  });
  const bytes = Buffer.from(await res.body.arrayBuffer());
  return {
    status: res.statusCode,
    bytes,
    digest: sha256Digest(bytes),
    ...optionalHeader('contentType', res.headers['content-type']),
    ...optionalHeader('dockerContentDigest', res.headers['docker-content-digest']),
  };
}

function optionalHeader<K extends string>(key: K, value: string | string[] | undefined): Partial<Record<K, string>> {
  const first = Array.isArray(value) ? value[0] : value;
  return first === undefined ? {} : ({ [key]: first } as Partial<Record<K, string>>);
}

async function pushBlob(
  base: string,
  layoutDir: string,
  blob: Descriptor,
  auth: Record<string, string>,
  signal: AbortSignal | undefined,
): Promise<void> {
  const head = await request(`${base}/blobs/${blob.digest}`, { method: 'HEAD', headers: auth, signal });
  await head.body.dump();
  if (head.statusCode === 200) return;
  const start = await request(`${base}/blobs/uploads/`, { method: 'POST', headers: auth, signal });
  await expectStatus(start, 202, `POST ${base}/blobs/uploads/`);
  const location = optionalHeader('location', start.headers.location).location;
  if (location === undefined) throw new Error(`POST ${base}/blobs/uploads/ returned no Location`);
  const uploadUrl = new URL(location, base);
  uploadUrl.searchParams.set('digest', blob.digest);
  // A monolithic PUT streamed from disk: big layers never sit in memory.
  const put = await request(uploadUrl, {
    method: 'PUT',
    headers: { ...auth, 'content-type': 'application/octet-stream', 'content-length': String(blob.size) },
    body: createReadStream(layoutBlobPath(layoutDir, blob.digest)),
    signal,
  });
  await expectStatus(put, 201, `PUT blob ${blob.digest}`);
}

async function putManifest(
  base: string,
  layoutDir: string,
  manifest: Descriptor,
  reference: string,
  auth: Record<string, string>,
  signal: AbortSignal | undefined,
): Promise<void> {
  const res = await request(`${base}/manifests/${reference}`, {
    method: 'PUT',
    headers: { ...auth, 'content-type': manifest.mediaType },
    body: await readLayoutBlob(layoutDir, manifest.digest),
    signal,
  });
  await expectStatus(res, 201, `PUT manifest ${reference}`);
  const echoed = optionalHeader('digest', res.headers['docker-content-digest']).digest;
  if (echoed !== undefined && echoed !== manifest.digest) {
    throw new Error(`registry stored manifest ${reference} as ${echoed}, expected ${manifest.digest}`);
  }
}

async function expectStatus(
  res: { statusCode: number; body: { text(): Promise<string> } },
  want: number,
  what: string,
): Promise<void> {
  const text = await res.body.text();
  if (res.statusCode !== want) throw new Error(`${what}: HTTP ${res.statusCode}, want ${want}: ${text.slice(0, 500)}`);
}
