import { OciError } from '../oci/errors.js';
import { parseImageReference, type ImageName } from '../oci/reference.js';

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
  if (entry.trim() !== entry || entry === '') fail('must be a non-empty image name without spaces');
  let body = entry;
  let prefix = false;
  if (entry.endsWith('/*')) {
    body = entry.slice(0, -2);
    prefix = true;
    if (body === '') fail('a bare "/*" would allow everything');
  }
  if (body.includes('*')) fail('"*" is only allowed as a trailing "/*"');
  if (body.includes('@')) fail('must not contain a digest');
  let parsed: ImageName & { tag?: string };
  try {
    parsed = parseImageReference(body);
  } catch (err) {
    if (prefix && /^[a-z0-9.-]+(?::\d+)?$/.test(body) && (body.includes('.') || body.includes(':') || body === 'localhost')) {
      // `registry.example/*`: a whole registry.
      return { kind: 'prefix', prefix: `${body}/` };
    }
    return fail(err instanceof OciError ? 'not a valid image name' : String(err));
  }
  if (parsed.tag !== undefined) fail('must not contain a tag');
  const name = `${parsed.registry}/${parsed.repository}`;
  if (prefix) {
    // `registry.example/team/*`: normalize without Docker Hub's library/ for a registry-only prefix.
    const explicitRegistry = body.includes('/') && /[.:]|^localhost\//.test(body.split('/')[0] ?? '');
    return { kind: 'prefix', prefix: explicitRegistry || body.includes('/') ? `${parsed.registry}/${body.includes('/') && !explicitRegistry ? body : body.slice(body.indexOf('/') + 1)}/`.replace(/\/+$/, '/') : `${name}/` };
  }
  return { kind: 'exact', name };
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
