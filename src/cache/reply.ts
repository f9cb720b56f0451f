import type { Readable } from 'node:stream';

/** How the cache answered, for the request log and metrics. */
export type CacheStatus = 'hit' | 'miss' | 'inflight' | 'revalidated' | 'stale' | 'passthrough';

/** A finished answer of a pull-through service: the route writes it as it is. */
export interface CacheReply {
  status: 200 | 206;
  headers: Record<string, string>;
  /** Absent for HEAD. */
  body?: Readable | Buffer;
  cacheStatus: CacheStatus;
  /** Where a body's bytes come from, for the bytes-served metric: this node's store, the upstream, another node. */
  bytesFrom?: 'store' | 'upstream' | 'peer';
}

/** The cache status of an answer from the store, a running fill or the upstream. */
export function cacheStatusOf(source: 'store' | 'inflight' | 'upstream' | 'peer' | 'revalidated' | 'stale'): CacheStatus {
  // A blob from another node is a miss here: this node's store did not have it.
  return source === 'store' ? 'hit' : source === 'upstream' || source === 'peer' ? 'miss' : source;
}
