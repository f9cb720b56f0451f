import { OciError } from './errors.js';
import { MANIFEST_MEDIA_TYPES, accepts, isIndexMediaType, type ParsedManifestJson } from './media-types.js';

const DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

function isDescriptor(d: unknown): boolean {
  if (typeof d !== 'object' || d === null) return false;
  const { digest, size, mediaType } = d as { digest?: unknown; size?: unknown; mediaType?: unknown };
  return typeof digest === 'string' && DIGEST_RE.test(digest) && Number.isSafeInteger(size) && (size as number) >= 0 && (mediaType === undefined || typeof mediaType === 'string');
}

/**
 * Refuses an upstream body that is not an image manifest or index of a media type the request accepted: a
 * registry's (or a redirect target's) arbitrary JSON must never be stored and served as a manifest. Checks the
 * shape the cache relies on (schemaVersion 2, descriptors with a digest and a size), that a `mediaType`
 * field agrees with the type the cache will serve, and the request's Accept list.
 */
export function assertManifest(parsed: ParsedManifestJson, mediaType: string, accepted: readonly string[]): void {
  const invalid = (why: string): OciError => new OciError('MANIFEST_INVALID', `upstream answer is not a manifest: ${why}`, { status: 502 });
  if (!MANIFEST_MEDIA_TYPES.includes(mediaType)) throw invalid(`media type ${mediaType.slice(0, 100)} is not a manifest type`);
  if (parsed.schemaVersion !== 2) throw invalid('schemaVersion is not 2');
  if (parsed.mediaType !== undefined && parsed.mediaType !== mediaType) throw invalid('its mediaType field disagrees with its Content-Type');
  if (isIndexMediaType(mediaType)) {
    if (!Array.isArray(parsed.manifests) || !parsed.manifests.every(isDescriptor)) throw invalid('an index needs a list of manifest descriptors');
  } else if (!isDescriptor(parsed.config) || !Array.isArray(parsed.layers) || !parsed.layers.every(isDescriptor)) {
    throw invalid('an image manifest needs a config descriptor and a list of layer descriptors');
  }
  if (!accepts(accepted, mediaType)) {
    throw new OciError('MANIFEST_UNKNOWN', `upstream has no manifest of an accepted media type (it answered ${mediaType})`, { status: 404 });
  }
}

/** Manifests are small; anything larger is refused rather than buffered. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/** A manifest's reference to a child manifest or a blob. */
export interface ManifestRef {
  child: string;
  kind: 'manifest' | 'blob';
}

/** Parses a manifest body as a JSON object; anything else is MANIFEST_INVALID (502: the upstream sent it). */
export function parseManifestJson(bytes: Buffer): ParsedManifestJson {
  try {
    const parsed = JSON.parse(bytes.toString('utf8')) as unknown;
    if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) return parsed as ParsedManifestJson;
  } catch {
    // not JSON: refused below
  }
  throw new OciError('MANIFEST_INVALID', 'upstream manifest is not a JSON object', { status: 502 });
}

/** What a manifest references: child manifests of an index, config and layers of an image. */
export function manifestRefs(parsed: ParsedManifestJson, mediaType: string): ManifestRef[] {
  const refs: ManifestRef[] = [];
  const add = (d: unknown, kind: ManifestRef['kind']): void => {
    if (typeof d === 'string' && /^sha(256|512):[a-f0-9]+$/.test(d)) refs.push({ child: d, kind });
  };
  if (isIndexMediaType(mediaType)) {
    for (const m of parsed.manifests ?? []) add(m.digest, 'manifest');
  } else {
    add(parsed.config?.digest, 'blob');
    for (const l of parsed.layers ?? []) add(l.digest, 'blob');
  }
  return refs;
}
