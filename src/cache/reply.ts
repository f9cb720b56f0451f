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
}

/** The cache status of an answer from the store, a running fill or the upstream. */
export function cacheStatusOf(source: 'store' | 'inflight' | 'upstream' | 'revalidated' | 'stale'): CacheStatus {
  return source === 'store' ? 'hit' : source === 'upstream' ? 'miss' : source;
}
