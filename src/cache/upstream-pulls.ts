import type { Metadata } from '../db/content-index.js';
import { countsForBackoff, type PullBackoff } from '../limiter/backoff.js';
import type { BandwidthLimit } from '../limiter/bandwidth.js';
import { createHash, randomBytes } from 'node:crypto';
import { digestKey, imageOfKey } from '../limiter/keys.js';
import type { PullLease, PullLimiter, PullLimiterState } from '../limiter/pull-limiter.js';

/** Hooks around an upstream pull, so a crash mid-pull leaves a trace (the kubelet's pull intents). */
export interface PullIntents {
  begin(registry: string, repository: string, reference: string): number;
  end(id: number): void;
}

/** The parallel-pull limit, back-off and bandwidth cap, as the caches apply them to their upstream transfers. */
export interface UpstreamPulls {
  limiter: PullLimiter;
  backoff: PullBackoff;
  bandwidth: BandwidthLimit | undefined;
}

/**
 * The limiter keys of the image(s) a digest belongs to in a repository: the top-level manifests (following index →
 * manifest → blob references the cache parsed) fetched through that repository, or the digest itself when no known
 * image holds it (it then counts as its own pull).
 */
export function imageKeys(metadata: Metadata, registry: string, repository: string, digest: string): string[] {
  const tops = new Set<string>();
  const seen = new Set<string>();
  const climb = (d: string): void => {
    if (seen.has(d)) return;
    seen.add(d);
    const parents = metadata.parentsInRepository(registry, repository, d);
    if (parents.length === 0 && d !== digest) tops.add(d);
    for (const p of parents) climb(p);
  };
  climb(digest);
  const keys = [...tops].map((t) => digestKey(registry, repository, t));
  return keys.length > 0 ? keys : [digestKey(registry, repository, digest)];
}


/**
 * Whether a pull's manifests are complete: an image manifest when all its blobs are stored; an index when one of its
 * child manifests is stored and complete (a client pulls one platform, or several).
 */
export function manifestsComplete(metadata: Metadata, manifests: ReadonlySet<string>): boolean {
  const imageComplete = (m: string): boolean => metadata.manifestRefs(m).every((ref) => ref.kind !== 'blob' || metadata.getBlob(ref.child) !== undefined);
  for (const m of manifests) {
    const refs = metadata.manifestRefs(m);
    const children = refs.filter((r) => r.kind === 'manifest');
    if (children.length > 0 || refs.length === 0) {
      if (!children.some((c) => metadata.getManifest(c.child) !== undefined && imageComplete(c.child))) return false;
    } else if (!imageComplete(m)) {
      return false;
    }
  }
  return true;
}

/**
 * Runs one upstream transfer under back-off and the image's pull slot: a reference backing off for this credential
 * class answers its last error at once; the lease is released when `work` ends unless `work` hands it on (a blob
 * fill keeps it).
 */
export async function underPullLimit<T>(
  pulls: UpstreamPulls | undefined,
  backoffKey: string,
  credentialClass: string,
  keys: string[],
  signal: AbortSignal,
  work: (lease: PullLease | undefined) => Promise<T>,
): Promise<T> {
  if (!pulls) return work(undefined);
  const blocked = pulls.backoff.check(backoffKey, credentialClass);
  if (blocked) throw blocked;
  const lease = await pulls.limiter.acquire(keys, signal);
  try {
    const value = await work(lease);
    pulls.backoff.success(backoffKey, credentialClass);
    return value;
  } catch (err) {
    if (countsForBackoff(err)) pulls.backoff.failure(backoffKey, err, credentialClass);
    throw err;
  } finally {
    lease.release();
  }
}

/** Process-local salt: an opaque name must not be a dictionary-reversible hash of a repository name. */
const LABEL_SALT = randomBytes(16);

/** How a repository not every pod may pull is shown on the operations listener: its registry and an opaque label. */
export function privateName(registry: string, repository: string): string {
  return `${registry}/(private ${createHash('sha256').update(LABEL_SALT).update(repository).digest('hex').slice(0, 12)})`;
}

/**
 * What the parallel-pull limit is doing, for `/debug/pulls` on the operations listener. A repository is named only
 * when anyone on the node may pull from it (`isOpen`); others show the registry and an opaque, per-process stable
 * label, never the repository, tag or digest.
 */
export function pullsView(limiter: PullLimiter, isOpen: (registry: string, repository: string) => boolean): PullLimiterState {
  const describe = (key: string): string => {
    const image = imageOfKey(key);
    if (image && isOpen(image.registry, image.repository)) return key;
    return privateName(image?.registry ?? '?', image?.repository ?? key);
  };
  const state = limiter.state();
  return {
    ...state,
    active: state.active.map((p) => ({ ...p, keys: [...new Set(p.keys.map(describe))] })),
    queued: state.queued.map((p) => ({ ...p, keys: [...new Set(p.keys.map(describe))] })),
  };
}
