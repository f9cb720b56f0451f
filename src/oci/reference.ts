import { OciError } from './errors.js';

/** Repository path components per the distribution spec: lowercase alphanumerics joined by separators. */
const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
/** distribution rejects names longer than this (host included); we apply it to the repository path. */
const MAX_NAME_LENGTH = 255;

/** Throws NAME_INVALID unless `name` is a valid repository name. */
export function assertRepositoryName(name: string): void {
  if (name.length === 0 || name.length > MAX_NAME_LENGTH || !NAME_RE.test(name)) {
    throw new OciError('NAME_INVALID', 'invalid repository name', { detail: { name: name.slice(0, 300) } });
  }
}

/** True when `tag` matches `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`. */
export function isTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

/** Throws TAG_INVALID unless `tag` is a valid tag. */
export function assertTag(tag: string): void {
  if (!isTag(tag)) throw new OciError('TAG_INVALID', 'invalid tag', { detail: { tag: tag.slice(0, 300) } });
}

/** The registry host Docker Hub images are known by, and the hosts that alias it. */
export const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

/** Canonical registry host: Docker Hub's aliases collapse to `docker.io`; hosts are case-insensitive. */
export function canonicalRegistry(host: string): string {
  const lower = host.toLowerCase();
  return DOCKER_HUB_ALIASES.has(lower) ? DOCKER_HUB : lower;
}

/** Docker Hub's official images live under `library/`: `busybox` means `library/busybox`. */
export function canonicalRepository(registry: string, repository: string): string {
  if (registry === DOCKER_HUB && !repository.includes('/')) return `library/${repository}`;
  return repository;
}

/** True when the first component of an image name is a registry host rather than a path (Docker's rule). */
export function looksLikeRegistryHost(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost';
}

/** A fully qualified image name without tag or digest, e.g. `docker.io/library/alpine`. */
export interface ImageName {
  registry: string;
  repository: string;
}

/**
 * Normalizes an image reference the way the kubelet and Docker do: a missing registry means docker.io,
 * a one-component Docker Hub name gets `library/`. Any tag or digest is split off and returned.
 */
export function parseImageReference(ref: string): ImageName & { tag?: string; digest?: string } {
  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  const slash = rest.indexOf('/');
  let registry = DOCKER_HUB;
  let repository = rest;
  if (slash > 0 && looksLikeRegistryHost(rest.slice(0, slash))) {
    registry = canonicalRegistry(rest.slice(0, slash));
    repository = rest.slice(slash + 1);
  }
  repository = canonicalRepository(registry, repository);
  assertRepositoryName(repository);
  if (tag !== undefined) assertTag(tag);
  const out: ImageName & { tag?: string; digest?: string } = { registry, repository };
  if (tag !== undefined) out.tag = tag;
  if (digest !== undefined) out.digest = digest;
  return out;
}
