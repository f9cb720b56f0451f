import type { Metadata } from '../db/queries.js';
import { countsForBackoff, type PullBackoff } from '../limiter/backoff.js';
import type { BandwidthLimit } from '../limiter/bandwidth.js';
import type { PullLease, PullLimiter } from '../limiter/pull-limiter.js';

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
  const keys = [...tops].map((t) => `${registry}/${repository}@${t}`);
  return keys.length > 0 ? keys : [`${registry}/${repository}@${digest}`];
}

/** Whether every blob of these image manifests is stored (the pull is then complete). */
export function manifestsComplete(metadata: Metadata, manifests: ReadonlySet<string>): boolean {
  for (const m of manifests) {
    for (const ref of metadata.manifestRefs(m)) if (ref.kind === 'blob' && !metadata.getBlob(ref.child)) return false;
  }
  return true;
}

/**
 * Runs one upstream transfer under back-off and the image's pull slot: a reference backing off answers its last
 * error at once; the lease is released when `work` ends unless `work` hands it on (a blob fill keeps it).
 */
export async function underPullLimit<T>(
  pulls: UpstreamPulls | undefined,
  backoffKey: string,
  keys: string[],
  work: (lease: PullLease | undefined) => Promise<T>,
): Promise<T> {
  if (!pulls) return work(undefined);
  const blocked = pulls.backoff.check(backoffKey);
  if (blocked) throw blocked;
  const lease = await pulls.limiter.acquire(keys);
  try {
    const value = await work(lease);
    pulls.backoff.success(backoffKey);
    return value;
  } catch (err) {
    if (countsForBackoff(err)) pulls.backoff.failure(backoffKey, err);
    throw err;
  } finally {
    lease.release();
  }
}
