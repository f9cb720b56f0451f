import { access } from 'node:fs/promises';
import { Evictor } from './lifecycle/eviction.js';
import type { Logger } from 'pino';
import { BlobCache } from './cache/blobs.js';
import { BlobService } from './cache/blob-service.js';
import { ManifestService } from './cache/manifest-service.js';
import { ReferrerService } from './cache/referrers.js';
import { TagCache, TagService } from './cache/tags.js';
import { ManifestCache } from './cache/manifests.js';
import type { Config } from './config/load.js';
import type { Metadata } from './db/content-index.js';
import type { PullIntentLog } from './db/intents.js';
import { openStore, type OpenStore } from './lifecycle/open-store.js';
import type { PullRecords } from './db/pull-records.js';
import type { BlobStore } from './store/blob-store.js';
import { UpstreamClient } from './upstream/client.js';
import type { AppDeps } from './app.js';
import type { Dispatcher } from 'undici';
import { environmentProxy, redactedProxy, type DispatcherOptions } from './upstream/dispatchers.js';
import { CredentialHasher } from './policy/credential-hash.js';
import { NodeCredentials } from './policy/node-credentials.js';
import { TokenService } from './policy/tokens.js';
import { CredentialVerifier } from './policy/verifier.js';
import { Metrics } from './metrics.js';
import { PullLimiter } from './limiter/pull-limiter.js';
import { PullBackoff } from './limiter/backoff.js';
import { BandwidthLimit } from './limiter/bandwidth.js';
import { manifestsComplete, type PullIntents, type UpstreamPulls } from './cache/upstream-pulls.js';
import { StatusReporter, UpstreamErrorLog } from './cache/status.js';
import { BlobSources } from './cache/sources.js';
import { startPeerSharing, type PeerSharing } from './peer-sharing.js';

/** The long-lived parts of a running cache, and how to shut them down. */
export interface Services extends AppDeps {
  store: BlobStore;
  metadata: Metadata;
  records: PullRecords;
  intents: PullIntentLog;
  metrics: Metrics;
  evictor: Evictor;
  pulls: UpstreamPulls;
  /** Sharing between nodes, when on: the main listener setup starts its peer listener. */
  peers: PeerSharing | undefined;
  close(): Promise<void>;
}

/** How `createServices` reaches upstreams; tests pass their own dispatcher or its options. */
export interface ServiceOptions {
  dispatcher?: Dispatcher;
  dispatcherOptions?: DispatcherOptions;
}

/**
 * The server's SQLite page cache (SQLite's default here is 16 MB). Hot lookups touch the upper levels of a few
 * B-trees, which 8 MiB holds at 100k blobs: first hits of 9k manifests at 100k rows ran as fast (p50 1.59-1.93 against
 * 1.76-1.93 ms, 4 sets each) with 8 MB less resident (115-117 against 123-125 MB).
 */
const SERVER_DB_CACHE_BYTES = 8 * 1024 * 1024;

/**
 * Opens the store and wires the running cache from its parts, in order: metrics, pull limits, the upstream client,
 * the credential policy, the sources of missing bytes, the caches, the eviction loop, and the pull-through services
 * the routes call. Each part is built by one function below from the parts before it.
 */
export async function createServices(config: Config, log: Logger, options: ServiceOptions = {}): Promise<Services> {
  const opened = await openStore(config, log, { exclusive: true, cacheBytes: SERVER_DB_CACHE_BYTES });
  const { store, metadata, records } = opened;
  const { metrics, bindGauges } = createMetrics(config, metadata);
  const pulls = createPullLimits(config, metadata, metrics);
  const upstreamErrors = new UpstreamErrorLog();
  const upstream = createUpstreamClient(config, log, { metrics, errors: upstreamErrors }, options);
  const policy = await createCredentialPolicy(config, log, opened, metrics);
  const peers = config.peers ? await startPeerSharing(config.peers, { log, metrics }) : undefined;
  const sources = createSources(config, log, { upstream, pulls, metrics, peers });
  const caches = createCaches(config, log, {
    store,
    metadata,
    records,
    upstream,
    sources,
    pulls,
    intents: policy.intents,
    onFillEnd: (registry, bytes, fromPeer) => {
      metrics.bytesFetched.labels(registry).inc(bytes - fromPeer);
      eviction.noteStored(bytes);
    },
  });
  // The evictor asks the blob cache what is busy, and the blob cache reports what it stored: the caches reach the
  // loop through the closure above, called only once fills run.
  const eviction = startEvictionLoop(config, log, {
    store,
    metadata,
    metrics,
    isBusy: (digest) => caches.blobs.isBusy(digest),
    onRemoved: (digests) => caches.manifests.forget(digests),
  });
  bindGauges({
    activeFills: () => caches.blobs.activeFills,
    queuedPulls: () => pulls.limiter.queued,
    oldestQueuedSeconds: () => Math.max(0, ...pulls.limiter.state().queued.map((q) => q.waitingForMs)) / 1000,
    storeUsage: () => eviction.evictor.measure(),
  });
  const { blobs, manifests, tags } = caches;
  const { verifier, tokens, hasher } = policy;
  const status = new StatusReporter({
    config,
    metrics,
    metadata,
    measure: () => eviction.evictor.measure(),
    blobs,
    pulls,
    errors: upstreamErrors,
    isOpen: (registry, repository) => verifier.repositoryIsOpen(registry, repository),
  });
  return {
    status,
    blobService: new BlobService({ blobs, manifests, verifier }),
    manifestService: new ManifestService({ manifests, tags, verifier }),
    tagService: new TagService({ upstream, verifier }),
    referrerService: new ReferrerService({ upstream, verifier }),
    config,
    log,
    store,
    metadata,
    upstream,
    blobs,
    manifests,
    records,
    intents: opened.intents,
    metrics,
    evictor: eviction.evictor,
    pulls,
    peers,
    verifier,
    tokens,
    hasher,
    ready: async () => {
      metadata.ping();
      await access(store.layout.tmpDir);
      return true;
    },
    close: async () => {
      eviction.stop();
      policy.abort();
      // Fills and manifest fetches write files and rows, eviction deletes rows: all must end before the database closes.
      await caches.shutdown();
      await peers?.close();
      await eviction.evictor.idle();
      await upstream.close();
      tokens.close();
      await opened.close();
    },
  };
}

/** What the gauges read at scrape time, from parts built after the metrics. */
interface BoundGauges {
  activeFills: () => number;
  queuedPulls: () => number;
  oldestQueuedSeconds: () => number;
  storeUsage: () => Promise<{ usedBytes: number; capacityBytes: number }>;
}

/** Metrics, with the gauges that read the caches at scrape time bound once the caches exist. */
function createMetrics(config: Config, metadata: Metadata): { metrics: Metrics; bindGauges(gauges: BoundGauges): void } {
  let gauges: BoundGauges = { activeFills: () => 0, queuedPulls: () => 0, oldestQueuedSeconds: () => 0, storeUsage: async () => ({ usedBytes: 0, capacityBytes: 0 }) };
  const metrics = new Metrics({
    activeFills: () => gauges.activeFills(),
    queuedPulls: () => gauges.queuedPulls(),
    storeBytes: () => metadata.storedBytes(),
    storeUsage: () => gauges.storeUsage(),
    oldestQueuedSeconds: () => gauges.oldestQueuedSeconds(),
    // Settings the dashboard and alerts compare against.
    settings: {
      highThresholdRatio: config.eviction.highThresholdPercent / 100,
      lowThresholdRatio: config.eviction.lowThresholdPercent / 100,
      pullQueueTimeoutSeconds: config.pullQueueTimeoutMs / 1000,
    },
  });
  return { metrics, bindGauges: (bound) => (gauges = bound) };
}

/** The parallel-pull limit, back-off and bandwidth cap the caches apply to their upstream transfers. */
function createPullLimits(config: Config, metadata: Metadata, metrics: Metrics): UpstreamPulls {
  return {
    limiter: new PullLimiter({
      maxParallel: config.maxParallelImagePulls,
      queueTimeoutMs: config.pullQueueTimeoutMs,
      lingerMs: config.pullLingerMs,
      isComplete: (manifests) => manifestsComplete(metadata, manifests),
      onWait: (seconds) => metrics.pullWait.observe(seconds),
    }),
    backoff: new PullBackoff(),
    bandwidth: config.upstreamBandwidthLimit === undefined ? undefined : new BandwidthLimit(config.upstreamBandwidthLimit),
  };
}

/**
 * The upstream client, observed by the metrics and the status page's error list; settings an operator must know
 * about are logged once here.
 */
function createUpstreamClient(config: Config, log: Logger, observers: { metrics: Metrics; errors: UpstreamErrorLog }, options: ServiceOptions): UpstreamClient {
  const { metrics, errors } = observers;
  for (const reg of config.registries.values()) {
    if (reg.transport.insecureSkipVerify) {
      log.warn({ registry: reg.host }, 'TLS VERIFICATION IS OFF for this registry (insecureSkipVerify): anyone on the path can serve it content');
    }
    if (reg.transport.proxy) log.info({ registry: reg.host, proxy: redactedProxy(reg.transport.proxy) }, 'registry reached through a proxy');
  }
  if (environmentProxy()) log.info('egress proxy from HTTPS_PROXY/HTTP_PROXY (NO_PROXY honoured) for registries without their own proxy');
  return new UpstreamClient({
    observe: (registry, method, status, seconds) => {
      metrics.upstreamLatency.labels(registry, method, String(status)).observe(seconds);
      // The upstream's own failures (transport failures are noted by class below).
      if (typeof status === 'number' && (status >= 500 || status === 429)) errors.note(registry, `HTTP ${status} to ${method}`);
    },
    onTransportFailure: (registry, failure) => {
      metrics.upstreamErrors.labels(registry, failure).inc();
      errors.note(registry, failure);
    },
    log,
    ...(options.dispatcher ? { dispatcher: options.dispatcher } : {}),
    ...(options.dispatcherOptions ? { dispatcherOptions: options.dispatcherOptions } : {}),
  });
}

/** Who may have what: the verifier (kubelet's order), the cache's own token realm, and the pull intents it keeps. */
interface CredentialPolicy {
  verifier: CredentialVerifier;
  tokens: TokenService;
  hasher: CredentialHasher;
  /** Crash traces around upstream pulls; none under NeverVerify. */
  intents: PullIntents | undefined;
  /** Aborts verifications in flight (shutdown). */
  abort(): void;
}

async function createCredentialPolicy(config: Config, log: Logger, opened: OpenStore, metrics: Metrics): Promise<CredentialPolicy> {
  const { records, metadata, intents: intentLog } = opened;
  const policy = config.imagePullCredentialsVerificationPolicy;
  if (policy !== 'NeverVerify') {
    const marked = records.initializeVerification();
    // A fresh store has nothing to count: saying "0 preloaded" would only alarm.
    if (marked !== undefined && marked > 0) log.info({ preloaded: marked }, 'credential verification enabled for the first time; stored content counts as preloaded');
  }
  const hasher = await CredentialHasher.load(config.storage);
  const nodeCredentials = await NodeCredentials.load({
    ...(config.nodeDockerConfig ? { dockerConfig: config.nodeDockerConfig } : {}),
    ...(config.credentialProviderConfig ? { providerConfig: config.credentialProviderConfig } : {}),
    ...(config.credentialProviderBinDir ? { providerBinDir: config.credentialProviderBinDir } : {}),
    log,
  });
  const shutdown = new AbortController();
  const verifier = new CredentialVerifier({
    signal: shutdown.signal,
    policy,
    allowlist: config.preloadedImagesVerificationAllowlist,
    records,
    metadata,
    nodeCredentials,
    log,
    onOutcome: (p, outcome) => metrics.verificationCounts.add(1, p, outcome),
  });
  return {
    verifier,
    tokens: new TokenService(config.tokenTtlMs),
    hasher,
    // NeverVerify keeps no records (the kubelet with the feature off), so it writes no intents either.
    intents: policy === 'NeverVerify' ? undefined : { begin: intentLog.begin.bind(intentLog), end: intentLog.end.bind(intentLog) },
    abort: () => shutdown.abort(new Error('registry-cache is shutting down')),
  };
}

/** Where a missing blob's bytes come from: other nodes when sharing is on (asked first), then the upstream. */
function createSources(
  config: Config,
  log: Logger,
  parts: { upstream: UpstreamClient; pulls: UpstreamPulls; metrics: Metrics; peers: PeerSharing | undefined },
): BlobSources {
  const { metrics } = parts;
  return new BlobSources({
    upstream: parts.upstream,
    log,
    bandwidth: parts.pulls.bandwidth,
    peers: parts.peers?.routing,
    ...(config.peers ? { peerIdleMs: config.peers.idleTimeoutMs } : {}),
    onEvent: (event, bytes = 0) => {
      if (event === 'fallback-upstream') metrics.peerFallbacks.inc();
      else metrics.peerFetches.labels(event === 'peer-complete' ? 'complete' : event === 'peer-failed' ? 'failed' : 'mismatch').inc();
      if (event === 'peer-complete' || event === 'peer-failed') metrics.peerBytesReceived.inc(bytes);
    },
  });
}

/** The store-and-upstream caches, one per kind of object, and their shared shutdown. */
interface Caches {
  blobs: BlobCache;
  manifests: ManifestCache;
  tags: TagCache;
  /** Aborts upstream work and waits until nothing more will be written. */
  shutdown(): Promise<void>;
}

function createCaches(
  config: Config,
  log: Logger,
  parts: {
    store: BlobStore;
    metadata: Metadata;
    records: PullRecords;
    upstream: UpstreamClient;
    sources: BlobSources;
    pulls: UpstreamPulls;
    intents: PullIntents | undefined;
    onFillEnd: (registry: string, bytes: number, fromPeer: number) => void;
  },
): Caches {
  const { store, metadata, records, upstream, sources, pulls, intents } = parts;
  const blobs = new BlobCache({
    store,
    metadata,
    upstream,
    sources,
    log,
    fillTimeoutMs: config.fillTimeoutMs,
    pulls,
    onFillEnd: parts.onFillEnd,
    sharePrivateLayers: config.peers?.sharePrivateLayers ?? false,
    ...(intents ? { intents } : {}),
  });
  const manifests = new ManifestCache({ store, metadata, upstream, log, pulls, ...(intents ? { intents } : {}) });
  const tags = new TagCache({ manifests, metadata, log, tagTtlMs: config.tagTtlMs, pulls, preloadedAs: records.importedAs.bind(records) });
  return {
    blobs,
    manifests,
    tags,
    shutdown: async () => {
      // Tag work runs inside the manifest cache's shutdown.
      await Promise.all([blobs.shutdown(), manifests.shutdown()]);
    },
  };
}

/** The evictor and what runs it: a timer every `gcInterval`, and a check as soon as new content may have crossed the high mark. */
interface EvictionLoop {
  evictor: Evictor;
  /** Notes bytes newly stored; schedules a collection when usage may have crossed the high mark. */
  noteStored(bytes: number): void;
  /** No collection starts after this (one running is awaited with `evictor.idle()`). */
  stop(): void;
}

function startEvictionLoop(
  config: Config,
  log: Logger,
  parts: {
    store: BlobStore;
    metadata: Metadata;
    metrics: Metrics;
    isBusy: (digest: string) => boolean;
    /** Told which digests' rows eviction deleted (the manifest cache drops their bytes from memory). */
    onRemoved: (digests: readonly string[]) => void;
  },
): EvictionLoop {
  const { store, metadata, metrics, isBusy, onRemoved } = parts;
  const evictor = new Evictor({ store, metadata, settings: config.eviction, log, isBusy, onRemoved, onEvict: (units) => metrics.evictions.inc(units) });
  let collectQueued = false;
  let closed = false;
  function scheduleCollect(): void {
    if (collectQueued || closed) return;
    collectQueued = true;
    setImmediate(() => {
      collectQueued = false;
      if (closed) return;
      evictor.collect().catch((err: unknown) => log.error({ err }, 'eviction failed'));
    });
  }
  const gcTimer = setInterval(scheduleCollect, config.gcIntervalMs);
  gcTimer.unref();
  return {
    evictor,
    // Check now rather than at the next tick, but only once the store has grown by the headroom the last measurement left.
    noteStored: (bytes) => {
      if (bytes > 0 && evictor.noteStored(bytes)) scheduleCollect();
    },
    stop: () => {
      closed = true;
      clearInterval(gcTimer);
    },
  };
}
