import { access } from 'node:fs/promises';
import { Evictor } from './lifecycle/eviction.js';
import { lockStore, markCleanShutdown, takeCleanShutdownMark, type StoreLock } from './store/lock.js';
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
import { openMetadata } from './db/open.js';
import type { PullRecords } from './db/pull-records.js';
import { recoverStore } from './store/recovery.js';
import { BlobStore } from './store/blob-store.js';
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
import { manifestsComplete, type UpstreamPulls } from './cache/upstream-pulls.js';

/** The long-lived parts of a running cache, and how to shut them down. */
export interface Services extends AppDeps {
  store: BlobStore;
  metadata: Metadata;
  records: PullRecords;
  intents: PullIntentLog;
  metrics: Metrics;
  evictor: Evictor;
  pulls: UpstreamPulls;
  close(): Promise<void>;
}

/** The store, its metadata and pull records, opened for a server or a one-shot command. */
export interface OpenStore {
  store: BlobStore;
  metadata: Metadata;
  records: PullRecords;
  intents: PullIntentLog;
  /** Held when this process may recover and evict (nobody else serves the store). */
  lock: StoreLock | undefined;
  /** Closes the database and releases the lock. */
  close(): Promise<void>;
}

/**
 * Opens the store and database. Crash recovery (temp files, rows without files, files without rows, leftover intents)
 * runs only under the store's lock: next to a live server the same steps would destroy its downloads in flight.
 * `exclusive` demands the lock (the server, `gc`, `verify --repair`); otherwise a held lock means "open as is".
 * `readOnly` (`records`, `verify`, `gc --dry-run`) never recovers and takes the lock only when also exclusive.
 * After a clean shutdown (the mark its lock holder leaves) the per-file reconciliation is skipped.
 */
export async function openStore(config: Config, log: Logger, options: { exclusive?: boolean; readOnly?: boolean } = {}): Promise<OpenStore> {
  const store = new BlobStore(config.storage);
  await store.ensureDirectories();
  let lock: StoreLock | undefined;
  if (options.exclusive || !options.readOnly) {
    try {
      lock = await lockStore(config.storage);
    } catch (err) {
      if (options.exclusive) throw err;
    }
  }
  const { index: metadata, records, intents } = openMetadata(store.layout.databaseFile);
  // Set once disk and rows are known to agree; only then may a clean close say so for the next start.
  let consistent = false;
  const close = async (): Promise<void> => {
    metadata.close();
    if (lock && consistent) await markCleanShutdown(config.storage);
    await lock?.release();
  };
  if (!lock || options.readOnly) return { store, metadata, records, intents, lock, close };
  const clean = await takeCleanShutdownMark(config.storage);
  const { removedTempFiles, droppedRows, strayFiles, recoveredIntents, usageDriftBytes } = await recoverStore(store, metadata, intents, clean);
  consistent = true;
  if (removedTempFiles + droppedRows + strayFiles + recoveredIntents > 0 || usageDriftBytes !== 0) {
    log.warn(
      { removedTempFiles, droppedRows, strayFiles, recoveredIntents, usageDriftBytes },
      'store reconciled after an unclean stop (pull intents left by a crash became records without credentials)',
    );
  }
  return { store, metadata, records, intents, lock, close };
}

/** Opens the store and wires the caches, the credential policy and the upstream client. */
export async function createServices(config: Config, log: Logger, options: { dispatcher?: Dispatcher; dispatcherOptions?: DispatcherOptions } = {}): Promise<Services> {
  const opened = await openStore(config, log, { exclusive: true });
  const { store, metadata, records, intents: intentLog } = opened;
  // Metrics read the caches lazily at scrape time; the holder is filled in once the caches exist.
  const live: { activeFills: () => number; queuedPulls: () => number } = { activeFills: () => 0, queuedPulls: () => 0 };
  const metrics = new Metrics({ activeFills: () => live.activeFills(), queuedPulls: () => live.queuedPulls(), storeBytes: () => metadata.storedBytes() });
  const pulls: UpstreamPulls = {
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
  live.queuedPulls = () => pulls.limiter.queued;
  for (const reg of config.registries.values()) {
    if (reg.transport.insecureSkipVerify) {
      log.warn({ registry: reg.host }, 'TLS VERIFICATION IS OFF for this registry (insecureSkipVerify): anyone on the path can serve it content');
    }
    if (reg.transport.proxy) log.info({ registry: reg.host, proxy: redactedProxy(reg.transport.proxy) }, 'registry reached through a proxy');
  }
  if (environmentProxy()) log.info('egress proxy from HTTPS_PROXY/HTTP_PROXY (NO_PROXY honoured) for registries without their own proxy');
  const upstream = new UpstreamClient({
    observe: (registry, method, status, seconds) => metrics.upstreamLatency.labels(registry, method, String(status)).observe(seconds),
    onTransportFailure: (registry, failure) => metrics.upstreamErrors.labels(registry, failure).inc(),
    log,
    ...(options.dispatcher ? { dispatcher: options.dispatcher } : {}),
    ...(options.dispatcherOptions ? { dispatcherOptions: options.dispatcherOptions } : {}),
  });
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
  // NeverVerify keeps no records (the kubelet with the feature off), so it writes no intents either.
  const intents = policy === 'NeverVerify' ? undefined : { begin: intentLog.begin.bind(intentLog), end: intentLog.end.bind(intentLog) };
  const blobs = new BlobCache({
    store,
    metadata,
    upstream,
    log,
    fillTimeoutMs: config.fillTimeoutMs,
    pulls,
    onFillEnd: (registry, bytes) => {
      metrics.bytesFetched.labels(registry).inc(bytes);
      // New content may have pushed usage over the high mark: check now rather than at the next tick, but only
      // once the store has grown by the headroom the last measurement left.
      if (bytes > 0 && evictor.noteStored(bytes)) scheduleCollect();
    },
    ...(intents ? { intents } : {}),
  });
  live.activeFills = () => blobs.activeFills;
  const evictor = new Evictor({
    store,
    metadata,
    settings: config.eviction,
    log,
    isBusy: (digest) => blobs.isBusy(digest),
    onEvict: (units) => metrics.evictions.inc(units),
  });
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
  const manifests = new ManifestCache({
    store,
    metadata,
    upstream,
    log,
    pulls,
    ...(intents ? { intents } : {}),
  });
  const tags = new TagCache({ manifests, metadata, log, tagTtlMs: config.tagTtlMs, pulls, preloadedAs: records.importedAs.bind(records) });
  const shutdown = new AbortController();
  const verifier = new CredentialVerifier({
    signal: shutdown.signal,
    policy,
    allowlist: config.preloadedImagesVerificationAllowlist,
    records,
    metadata,
    nodeCredentials,
    log,
    onOutcome: (p, outcome) => metrics.verifications.labels(p, outcome).inc(),
  });
  const tokens = new TokenService(config.tokenTtlMs);
  return {
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
    intents: intentLog,
    metrics,
    evictor,
    pulls,
    verifier,
    tokens,
    hasher,
    ready: async () => {
      metadata.ping();
      await access(store.layout.tmpDir);
      return true;
    },
    close: async () => {
      closed = true;
      clearInterval(gcTimer);
      shutdown.abort(new Error('registry-cache is shutting down'));
      // Fills and manifest fetches write files and rows, eviction deletes rows: all must end before the database closes.
      await Promise.all([blobs.shutdown(), manifests.shutdown()]);
      await evictor.idle();
      await upstream.close();
      tokens.close();
      await opened.close();
    },
  };
}
