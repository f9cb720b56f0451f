import { hostname } from 'node:os';
import type { Counter } from 'prom-client';
import type { Config } from '../config/load.js';
import type { ImageUsage, Metadata } from '../db/content-index.js';
import type { StoreUsage } from '../lifecycle/eviction.js';
import type { Metrics } from '../metrics.js';
import type { BlobCache, FillSource } from './blobs.js';
import { privateName, pullsView, type UpstreamPulls } from './upstream-pulls.js';

/** Upstream failures the status page keeps, newest first. */
const RECENT_ERRORS = 20;
/** Images the status page lists. */
const RECENT_IMAGES = 12;

/** Whether every pod on the node may pull from a repository: only such repositories are named on the operations listener. */
export type RepositoryIsOpen = (registry: string, repository: string) => boolean;

/** One upstream failure: which registry, and what went wrong (a transport failure class, or an HTTP status). */
export interface UpstreamErrorEntry {
  at: string;
  registry: string;
  error: string;
}

/**
 * The last upstream failures, in memory: transport failures by class and answers that are the upstream's fault (5xx,
 * 429). No repository, reference or credential: the upstream client reports only the registry.
 */
export class UpstreamErrorLog {
  private readonly entries: UpstreamErrorEntry[] = [];

  /** Records a failure now. */
  note(registry: string, error: string): void {
    this.entries.unshift({ at: new Date().toISOString(), registry, error });
    this.entries.length = Math.min(this.entries.length, RECENT_ERRORS);
  }

  /** The recorded failures, newest first. */
  list(): UpstreamErrorEntry[] {
    return [...this.entries];
  }
}

/** A stored image as the status page lists it. */
export interface ImageStatus {
  /** Its names (`registry/repository:tag`), each repository not every pod may pull shown as `registry/(private …)`. */
  names: string[];
  /** The top-level manifest's digest, when the image is named (else null). */
  digest: string | null;
  sizeBytes: number;
  complete: boolean;
  lastUsed: string;
}

/** What the store alone tells: usage against the eviction thresholds and the most recently used images. */
export interface StoreStatus {
  node: string;
  generatedAt: string;
  policy: string;
  store: StoreUsage & { usedPercent: number; highPercent: number; lowPercent: number };
  images: ImageStatus[];
}

/** A blob download in progress. */
export interface FillStatus {
  image: string;
  digest: string | null;
  source: FillSource;
  bytes: number;
  size: number | null;
  readers: number;
  elapsedMs: number;
}

/** The whole status of a running cache: `/status.json`, rendered by `/status` and `registry-cache status`. */
export interface StatusReport extends StoreStatus {
  startedAt: string;
  uptimeSeconds: number;
  cache: {
    hits: number;
    misses: number;
    /** Hits over all manifest and blob answers since start; null before the first. */
    hitRatio: number | null;
    bytesServed: Record<string, number>;
    bytesFetched: number;
    /** Bytes served without an upstream download (from the store, or a peer). */
    bytesSaved: number;
  };
  pulls: {
    limit: number | null;
    queueTimeoutMs: number;
    active: { images: string[]; transfers: number; activeForMs: number }[];
    queued: { images: string[]; waitingForMs: number }[];
    fills: FillStatus[];
  };
  upstreamErrors: UpstreamErrorEntry[];
  verification: { policy: string; outcomes: Record<string, number> };
}

/** Answers counted as hits: served from the store (a revalidated or stale tag too); misses and joined downloads are not. */
const HIT_RESULTS = new Set(['hit', 'revalidated', 'stale']);

function imageName(name: ImageUsage['names'][number], isOpen: RepositoryIsOpen): string {
  if (!isOpen(name.registry, name.repository)) return privateName(name.registry, name.repository);
  return `${name.registry}/${name.repository}${name.tag === undefined ? '' : `:${name.tag}`}`;
}

/** Usage, thresholds and recent images, from the store's database and filesystem. */
export async function storeStatus(deps: {
  config: Pick<Config, 'imagePullCredentialsVerificationPolicy' | 'eviction'>;
  metadata: Pick<Metadata, 'recentImages'>;
  measure: () => Promise<StoreUsage>;
  isOpen: RepositoryIsOpen;
}): Promise<StoreStatus> {
  const usage = await deps.measure();
  const images = deps.metadata.recentImages(RECENT_IMAGES).map((image): ImageStatus => {
    const names = [...new Set(image.names.map((n) => imageName(n, deps.isOpen)))];
    const named = image.names.some((n) => deps.isOpen(n.registry, n.repository));
    return { names, digest: named ? image.digest : null, sizeBytes: image.storedBytes, complete: image.complete, lastUsed: new Date(image.lastAccess).toISOString() };
  });
  return {
    node: hostname(),
    generatedAt: new Date().toISOString(),
    policy: deps.config.imagePullCredentialsVerificationPolicy,
    store: {
      ...usage,
      usedPercent: usage.capacityBytes > 0 ? (usage.usedBytes / usage.capacityBytes) * 100 : 0,
      highPercent: deps.config.eviction.highThresholdPercent,
      lowPercent: deps.config.eviction.lowThresholdPercent,
    },
    images,
  };
}

async function counts<T extends string>(counter: Counter<T>): Promise<{ labels: Partial<Record<T, string | number>>; value: number }[]> {
  return (await counter.get()).values;
}

/**
 * Assembles the status of a running cache from its metrics, pulls, fills, store and recent upstream errors. Names
 * only repositories every pod on the node may pull (the operations listener is reachable from the node's network);
 * never credentials or their hashes.
 */
export class StatusReporter {
  private readonly startedAt = Date.now();

  constructor(
    private readonly deps: {
      config: Pick<Config, 'imagePullCredentialsVerificationPolicy' | 'eviction' | 'pullQueueTimeoutMs'>;
      metrics: Metrics;
      metadata: Pick<Metadata, 'recentImages'>;
      measure: () => Promise<StoreUsage>;
      blobs: Pick<BlobCache, 'fillsInProgress'>;
      pulls: UpstreamPulls;
      errors: UpstreamErrorLog;
      isOpen: RepositoryIsOpen;
    },
  ) {}

  /** The status now. */
  async report(): Promise<StatusReport> {
    const { metrics, isOpen, config } = this.deps;
    const now = Date.now();
    let hits = 0;
    let misses = 0;
    for (const { labels, value } of await counts(metrics.cacheResults)) {
      if (HIT_RESULTS.has(String(labels.result))) hits += value;
      else misses += value;
    }
    const bytesServed: Record<string, number> = {};
    for (const { labels, value } of await counts(metrics.bytesServed)) bytesServed[String(labels.source)] = (bytesServed[String(labels.source)] ?? 0) + value;
    const bytesFetched = (await counts(metrics.bytesFetched)).reduce((n, v) => n + v.value, 0);
    const outcomes: Record<string, number> = {};
    for (const { labels, value } of await counts(metrics.verifications)) {
      if (labels.policy === config.imagePullCredentialsVerificationPolicy) outcomes[String(labels.result)] = (outcomes[String(labels.result)] ?? 0) + value;
    }
    const limiter = pullsView(this.deps.pulls.limiter, isOpen);
    const fills = this.deps.blobs.fillsInProgress().map((f): FillStatus => {
      const open = isOpen(f.registry, f.repository);
      return {
        image: open ? `${f.registry}/${f.repository}` : privateName(f.registry, f.repository),
        digest: open ? f.digest : null,
        source: f.source,
        bytes: f.bytes,
        size: f.size ?? null,
        readers: f.readers,
        elapsedMs: now - f.startedAt,
      };
    });
    return {
      ...(await storeStatus(this.deps)),
      startedAt: new Date(this.startedAt).toISOString(),
      uptimeSeconds: Math.round((now - this.startedAt) / 1000),
      cache: {
        hits,
        misses,
        hitRatio: hits + misses > 0 ? hits / (hits + misses) : null,
        bytesServed,
        bytesFetched,
        bytesSaved: Object.entries(bytesServed).reduce((n, [source, bytes]) => (source === 'upstream' ? n : n + bytes), 0),
      },
      pulls: {
        limit: limiter.limit,
        queueTimeoutMs: config.pullQueueTimeoutMs,
        active: limiter.active.map((p) => ({ images: p.keys, transfers: p.transfers, activeForMs: p.activeForMs })),
        queued: limiter.queued.map((p) => ({ images: p.keys, waitingForMs: p.waitingForMs })),
        fills,
      },
      upstreamErrors: this.deps.errors.list(),
      verification: { policy: config.imagePullCredentialsVerificationPolicy, outcomes },
    };
  }
}
