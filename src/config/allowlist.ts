import { DOCKER_HUB, assertRepositoryName, canonicalRegistry, looksLikeRegistryHost, parseImageReference, type ImageName } from '../oci/reference.js';

/** One `preloadedImagesVerificationAllowlist` entry: an exact image name or a `/*` prefix. */
export type AllowlistEntry = { kind: 'exact'; name: string } | { kind: 'prefix'; prefix: string };

/**
 * Parses an allowlist entry with the kubelet's rules: a normalized image name without tag or digest
 * (short names normalize: `alpine` → `docker.io/library/alpine`), or a prefix ending in `/*`.
 * Any other `*`, a bare `/*`, a tag or a digest is an error naming the entry.
 */
export function parseAllowlistEntry(entry: string): AllowlistEntry {
  const fail = (why: string): never => {
    throw new Error(`preloadedImagesVerificationAllowlist entry "${entry}": ${why}`);
  };
  if (entry === '' || /\s/.test(entry)) fail('must be a non-empty image name without spaces');
  const prefix = entry.endsWith('/*');
  const body = prefix ? entry.slice(0, -2) : entry;
  if (prefix && body === '') fail('a bare "/*" would allow every image');
  if (body.includes('*')) fail('"*" is only allowed as a trailing "/*"');
  if (body.includes('@')) fail('must not contain a digest');
  const slash = body.indexOf('/');
  const first = slash < 0 ? body : body.slice(0, slash);
  if (prefix) {
    // A prefix is matched on the normalized name, but Docker Hub's library/ is not inserted into it.
    if (slash < 0 && looksLikeRegistryHost(first)) return { kind: 'prefix', prefix: `${canonicalRegistry(first)}/` };
    const hasHost = slash > 0 && looksLikeRegistryHost(first);
    const registry = hasHost ? canonicalRegistry(first) : DOCKER_HUB;
    const path = hasHost ? body.slice(slash + 1) : body;
    try {
      assertRepositoryName(path);
    } catch {
      fail('not a valid image name prefix');
    }
    return { kind: 'prefix', prefix: `${registry}/${path}/` };
  }
  let parsed: ImageName & { tag?: string };
  try {
    parsed = parseImageReference(body);
  } catch {
    return fail('not a valid image name');
  }
  if (parsed.tag !== undefined) fail('must not contain a tag');
  return { kind: 'exact', name: `${parsed.registry}/${parsed.repository}` };
}

/** A parsed allowlist. */
export class Allowlist {
  private constructor(private readonly entries: readonly AllowlistEntry[]) {}

  /** Parses every entry; throws on the first invalid one, naming it. */
  static parse(entries: readonly string[]): Allowlist {
    return new Allowlist(entries.map(parseAllowlistEntry));
  }

  /** Whether `registry/repository` is allowlisted. */
  matches(image: ImageName): boolean {
    const name = `${image.registry}/${image.repository}`;
    return this.entries.some((e) => (e.kind === 'exact' ? e.name === name : name.startsWith(e.prefix)));
  }
}
