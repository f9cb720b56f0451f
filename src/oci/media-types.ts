/** Manifest media types the cache stores and serves. */
export const MEDIA_TYPES = Object.freeze({
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
});

/** Every manifest type, in the order sent upstream as Accept. */
export const MANIFEST_MEDIA_TYPES: readonly string[] = Object.freeze([
  MEDIA_TYPES.ociIndex,
  MEDIA_TYPES.dockerManifestList,
  MEDIA_TYPES.ociManifest,
  MEDIA_TYPES.dockerManifest,
]);

/** True for index/list types, whose children are manifests rather than blobs. */
export function isIndexMediaType(mediaType: string): boolean {
  return mediaType === MEDIA_TYPES.ociIndex || mediaType === MEDIA_TYPES.dockerManifestList;
}

/**
 * Splits one or more Accept header values into bare media types (frozen: the last header's list is reused).
 * Clients such as skopeo send each type as its own header; others join them with commas.
 */
export function parseAccept(header: string | string[] | undefined): readonly string[] {
  if (header === undefined) return NO_TYPES;
  // A client sends the same Accept on every request (containerd: four types): split it once, not per manifest hit.
  if (header === lastAccept.header) return lastAccept.types;
  const values = Array.isArray(header) ? header : [header];
  const out: string[] = [];
  for (const value of values) {
    for (const part of value.split(',')) {
      const type = part.split(';')[0]?.trim().toLowerCase();
      if (type) out.push(type);
    }
  }
  const types = Object.freeze(out);
  if (typeof header === 'string') lastAccept = { header, types };
  return types;
}

const NO_TYPES: readonly string[] = Object.freeze([]);
let lastAccept: { header: string | undefined; types: readonly string[] } = { header: undefined, types: NO_TYPES };

/** Whether a stored manifest of `mediaType` satisfies the client's Accept list (none or `*\/*` accepts all). */
export function accepts(acceptList: readonly string[], mediaType: string): boolean {
  if (acceptList.length === 0) return true;
  const wanted = mediaType.toLowerCase();
  return acceptList.some((a) => a === '*/*' || a === wanted || a === 'application/*' || a === 'application/json');
}

/** The media type of a manifest body: its `mediaType` field, else inferred from its shape (OCI allows omitting it). */
export function manifestMediaType(parsed: ParsedManifestJson, headerType: string | undefined): string {
  if (typeof parsed.mediaType === 'string' && parsed.mediaType) return parsed.mediaType;
  if (Array.isArray(parsed.manifests)) return MEDIA_TYPES.ociIndex;
  if (headerType && MANIFEST_MEDIA_TYPES.includes(headerType)) return headerType;
  return MEDIA_TYPES.ociManifest;
}

/** The fields of a manifest or index that the cache reads. */
export interface ParsedManifestJson {
  schemaVersion?: unknown;
  mediaType?: unknown;
  config?: { digest?: unknown; size?: unknown; mediaType?: unknown };
  layers?: { digest?: unknown; size?: unknown; mediaType?: unknown }[];
  manifests?: { digest?: unknown; size?: unknown; mediaType?: unknown; platform?: unknown }[];
  blobs?: { digest?: unknown }[];
  subject?: { digest?: unknown };
}
