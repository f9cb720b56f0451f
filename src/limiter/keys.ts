/**
 * The key grammar of the pull limiter and the back-off, in one place: `registry/repository@digest` names content (an
 * image pull is keyed by its top-level manifest's digest), `registry/repository:tag` a tag. The limiter aliases a tag's
 * pull to its digest's once the tag resolves, so both forms name the same image pull.
 */
export function referenceKey(registry: string, repository: string, reference: string): string {
  // A reference with ':' is a digest (`sha256:…`); tags cannot contain one.
  return reference.includes(':') ? digestKey(registry, repository, reference) : tagKey(registry, repository, reference);
}

/** The key of content `digest` pulled through `registry/repository`. */
export function digestKey(registry: string, repository: string, digest: string): string {
  return `${registry}/${repository}@${digest}`;
}

/** The key of a tag of `registry/repository`. */
export function tagKey(registry: string, repository: string, tag: string): string {
  return `${registry}/${repository}:${tag}`;
}

/** The registry and repository a key names, or undefined for something that is not a key. */
export function imageOfKey(key: string): { registry: string; repository: string } | undefined {
  const slash = key.indexOf('/');
  const rest = key.slice(slash + 1);
  const end = rest.includes('@') ? rest.indexOf('@') : rest.lastIndexOf(':');
  if (slash <= 0 || end <= 0) return undefined;
  return { registry: key.slice(0, slash), repository: rest.slice(0, end) };
}
