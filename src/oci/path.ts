import { parseDigest } from './digest.js';
import { OciError } from './errors.js';
import { assertRepositoryName, canonicalRegistry, canonicalRepository, isTag } from './reference.js';

/** What a `/v2/...` path asks for, before the upstream is chosen. */
export type OciRoute =
  | { kind: 'base' }
  | { kind: 'manifest'; name: string; reference: string; isDigest: boolean }
  | { kind: 'blob'; name: string; digest: string }
  | { kind: 'tags'; name: string }
  | { kind: 'referrers'; name: string; digest: string };

const MANIFEST_RE = /^(.+)\/manifests\/([^/]+)$/;
const BLOB_RE = /^(.+)\/blobs\/([^/]+)$/;
const UPLOAD_RE = /^(.+)\/blobs\/uploads(?:\/.*)?$/;
const TAGS_RE = /^(.+)\/tags\/list$/;
const REFERRERS_RE = /^(.+)\/referrers\/([^/]+)$/;

/**
 * Parses the path after `/v2/` (no query string). Validates name, tag and digest;
 * push endpoints and unknown paths are errors, never a fall-through.
 */
export function parseV2Path(rest: string): OciRoute {
  if (rest === '' || rest === '/') return { kind: 'base' };
  if (UPLOAD_RE.test(rest)) throw new OciError('UNSUPPORTED', 'registry-cache is a pull-only mirror');
  let m = MANIFEST_RE.exec(rest);
  if (m) {
    const name = m[1] as string;
    const reference = decodeURIComponentSafe(m[2] as string);
    assertRouteName(name);
    if (reference.includes(':')) {
      return { kind: 'manifest', name, reference: parseDigest(reference).value, isDigest: true };
    }
    // No manifest can have such a tag: the spec's answer is 404 (the conformance suite asks for `.INVALID_MANIFEST_NAME`),
    // and no upstream is asked.
    if (!isTag(reference)) throw new OciError('MANIFEST_UNKNOWN', 'manifest unknown: not a valid tag or digest', { detail: { tag: reference.slice(0, 300) } });
    return { kind: 'manifest', name, reference, isDigest: false };
  }
  m = BLOB_RE.exec(rest);
  if (m) {
    const name = m[1] as string;
    assertRouteName(name);
    return { kind: 'blob', name, digest: parseDigest(decodeURIComponentSafe(m[2] as string)).value };
  }
  m = TAGS_RE.exec(rest);
  if (m) {
    const name = m[1] as string;
    assertRouteName(name);
    return { kind: 'tags', name };
  }
  m = REFERRERS_RE.exec(rest);
  if (m) {
    const name = m[1] as string;
    assertRouteName(name);
    return { kind: 'referrers', name, digest: parseDigest(decodeURIComponentSafe(m[2] as string)).value };
  }
  throw new OciError('NAME_INVALID', 'unrecognized registry API path', { status: 404, detail: { path: rest.slice(0, 300) } });
}

/** The upstream registry and repository a request is for. */
export interface Target {
  registry: string;
  repository: string;
}

/**
 * Picks the upstream: containerd's `?ns=`, else a leading path component naming a configured registry
 * (podman/CRI-O/skopeo mirrors with a path prefix), else the default registry.
 * An unknown `ns` (or host-like prefix: `ghcr.io/`, `host:5000/`, `localhost/`) is DENIED, never contacted: the cache
 * is not an open proxy, and a client's credentials for that host never go to the default registry.
 */
export function resolveTarget(name: string, ns: string | undefined, knownRegistries: ReadonlySet<string>, defaultRegistry: string): Target {
  if (ns !== undefined && ns !== '') {
    const registry = canonicalRegistry(ns);
    if (!knownRegistries.has(registry)) {
      throw new OciError('DENIED', `registry ${registry.slice(0, 200)} is not configured on this cache`, { detail: { registry: registry.slice(0, 200) } });
    }
    // With ns the whole name is the repository: a host-like first component (`EVIL:1/app`) is no repository name, and
    // its ':' would reach the upstream's path and token scope (`repository:EVIL:1/app:pull`).
    assertRepositoryName(name);
    return { registry, repository: canonicalRepository(registry, name) };
  }
  const slash = name.indexOf('/');
  if (slash > 0) {
    const first = canonicalRegistry(name.slice(0, slash));
    if (knownRegistries.has(first)) {
      const repository = name.slice(slash + 1);
      assertRepositoryName(repository);
      return { registry: first, repository: canonicalRepository(first, repository) };
    }
    // Docker's reference rule: a first component with '.' or ':', or `localhost`, is a registry host. One that is not
    // configured is refused, never read as a namespace of the default registry (which would get the client's credentials).
    if (looksLikeHost(first)) {
      throw new OciError('DENIED', `registry ${first.slice(0, 200)} is not configured on this cache`, { detail: { registry: first.slice(0, 200) } });
    }
  }
  return { registry: defaultRegistry, repository: canonicalRepository(defaultRegistry, name) };
}

/** Whether a first path component names a registry host rather than a namespace. */
function looksLikeHost(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost';
}

const HOST_PREFIX_RE = /^[a-zA-Z0-9.-]+(?::[0-9]{1,5})?$/;

/** A route name is a repository name, optionally behind a registry host component (`127.0.0.1:5000/app`). */
function assertRouteName(name: string): void {
  const slash = name.indexOf('/');
  const first = slash > 0 ? name.slice(0, slash) : '';
  if (first.includes(':') && HOST_PREFIX_RE.test(first)) {
    assertRepositoryName(name.slice(slash + 1));
    return;
  }
  assertRepositoryName(name);
}

function decodeURIComponentSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
