import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Prometheus metrics of one cache process. Labels are bounded: routes and results, never names or digests. */
export class Metrics {
  readonly registry = new Registry();
  readonly httpRequests: Counter<'route' | 'method' | 'status'>;
  readonly cacheResults: Counter<'kind' | 'result'>;
  readonly bytesServed: Counter<'source'>;
  /** What every request adds to `httpRequests`, `cacheResults`, `bytesServed` and `verifications` (see CounterTally). */
  readonly requestCounts = new CounterTally(['route', 'method', 'status'] as const);
  readonly cacheResultCounts = new CounterTally(['kind', 'result'] as const);
  readonly bytesServedCounts = new CounterTally(['source'] as const);
  readonly verificationCounts = new CounterTally(['policy', 'result'] as const);
  readonly bytesFetched: Counter<'registry'>;
  readonly upstreamLatency: Histogram<'registry' | 'method' | 'status'>;
  readonly upstreamErrors: Counter<'registry' | 'class'>;
  readonly pullsInFlight: Gauge;
  readonly pullsQueued: Gauge;
  readonly pullWait: Histogram;
  readonly verifications: Counter<'policy' | 'result'>;
  readonly evictions: Counter;
  readonly idleCollections: Counter;
  readonly storeSize: Gauge;
  readonly requestDuration: Histogram<'route' | 'method'>;
  readonly storeUsage: Gauge;
  readonly storeCapacity: Gauge;
  readonly storeThresholds: Gauge<'threshold'>;
  readonly queueOldestWait: Gauge;
  readonly queueTimeout: Gauge;
  readonly peerBytesReceived: Counter;
  readonly peerBytesSent: Counter;
  readonly peerFetches: Counter<'outcome'>;
  readonly peerFallbacks: Counter;
  readonly peerCoordinatorAnswers: Counter<'answer'>;
  readonly peerLeasesLost: Counter;
  readonly peerBlobRequests: Counter<'result'>;
  readonly peerRefused: Counter<'reason'>;
  private peerMembers: () => { ready: number; notReady: number } = () => ({ ready: 0, notReady: 0 });

  constructor(sources: {
    activeFills: () => number;
    queuedPulls: () => number;
    storeBytes: () => number;
    /** What eviction compares with its thresholds: used and capacity bytes. */
    storeUsage?: () => Promise<{ usedBytes: number; capacityBytes: number }>;
    /** How long the longest-waiting queued pull has waited. */
    oldestQueuedSeconds?: () => number;
    /** Settings the alerts compare against (ratios of capacity, seconds). */
    settings?: { highThresholdRatio: number; lowThresholdRatio: number; pullQueueTimeoutSeconds: number };
  }) {
    const registers = [this.registry];
    // prom-client's own names already say process_ or nodejs_: the prefix adds only the product's.
    collectDefaultMetrics({ register: this.registry, prefix: 'registry_cache_' });
    this.httpRequests = new Counter({ name: 'registry_cache_http_requests_total', help: 'Requests by route kind, method and status', labelNames: ['route', 'method', 'status'], registers, collect: flushing(this.requestCounts) });
    this.cacheResults = new Counter({ name: 'registry_cache_cache_results_total', help: 'Manifest and blob answers by outcome (hit, miss, inflight, revalidated, stale)', labelNames: ['kind', 'result'], registers, collect: flushing(this.cacheResultCounts) });
    this.bytesServed = new Counter({ name: 'registry_cache_bytes_served_total', help: 'Response body bytes by where they came from (store: this node\'s disk, upstream, peer: another node)', labelNames: ['source'], registers, collect: flushing(this.bytesServedCounts) });
    this.bytesFetched = new Counter({ name: 'registry_cache_upstream_bytes_fetched_total', help: 'Blob bytes downloaded from upstreams', labelNames: ['registry'], registers });
    this.upstreamLatency = new Histogram({
      name: 'registry_cache_upstream_request_duration_seconds',
      help: 'Time to upstream response headers',
      labelNames: ['registry', 'method', 'status'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.upstreamErrors = new Counter({
      name: 'registry_cache_upstream_errors_total',
      help: 'Upstream endpoints not reached, by what went wrong (proxy-auth, tls-unknown-ca, client-cert, dns, timeout, ...)',
      labelNames: ['registry', 'class'],
      registers,
    });
    this.pullsInFlight = new Gauge({ name: 'registry_cache_pulls_in_flight', help: 'Upstream blob transfers under way', registers, collect() {
      this.set(sources.activeFills());
    } });
    this.pullsQueued = new Gauge({ name: 'registry_cache_pulls_queued', help: 'Image pulls waiting for a parallel-pull slot', registers, collect() {
      this.set(sources.queuedPulls());
    } });
    this.pullWait = new Histogram({
      name: 'registry_cache_pull_wait_seconds',
      help: 'Time image pulls waited for a parallel-pull slot',
      buckets: [0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers,
    });
    this.verifications = new Counter({ name: 'registry_cache_credential_verifications_total', help: 'Credential checks by policy and result', labelNames: ['policy', 'result'], registers, collect: flushing(this.verificationCounts) });
    this.evictions = new Counter({ name: 'registry_cache_evictions_total', help: 'Images evicted from the store', registers });
    this.idleCollections = new Counter({ name: 'registry_cache_idle_memory_collections_total', help: 'Memory-reducing collections run once the server went quiet after work', registers });
    this.storeSize = new Gauge({ name: 'registry_cache_store_size_bytes', help: 'Bytes of content in the store', registers, collect() {
      this.set(sources.storeBytes());
    } });
    this.requestDuration = new Histogram({
      name: 'registry_cache_http_request_duration_seconds',
      help: 'Time to answer a request (to the last byte sent), by route kind and method',
      labelNames: ['route', 'method'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120],
      registers,
    });
    // A failed measurement (the store's filesystem gone) leaves the last value rather than failing the scrape.
    const storeUsage = async (): Promise<{ usedBytes: number; capacityBytes: number } | undefined> => sources.storeUsage?.().catch(() => undefined);
    this.storeUsage = new Gauge({
      name: 'registry_cache_store_usage_ratio',
      help: 'Usage eviction compares with its thresholds (0-1): store bytes of maxStorageBytes, or the store filesystem used',
      registers,
      async collect() {
        const usage = await storeUsage();
        if (usage && usage.capacityBytes > 0) this.set(usage.usedBytes / usage.capacityBytes);
      },
    });
    this.storeCapacity = new Gauge({
      name: 'registry_cache_store_capacity_bytes',
      help: 'Capacity the thresholds are percentages of: maxStorageBytes, or the store filesystem size',
      registers,
      async collect() {
        const usage = await storeUsage();
        if (usage) this.set(usage.capacityBytes);
      },
    });
    this.storeThresholds = new Gauge({
      name: 'registry_cache_store_threshold_ratio',
      help: 'imageGCHighThresholdPercent and imageGCLowThresholdPercent as ratios (0-1)',
      labelNames: ['threshold'],
      registers,
    });
    this.queueOldestWait = new Gauge({ name: 'registry_cache_pull_queue_oldest_wait_seconds', help: 'How long the longest-waiting queued image pull has waited (0 when none waits)', registers, collect() {
      this.set(sources.oldestQueuedSeconds?.() ?? 0);
    } });
    this.queueTimeout = new Gauge({ name: 'registry_cache_pull_queue_timeout_seconds', help: 'pullQueueTimeout: a queued pull is refused (429) after this long', registers });
    if (sources.settings) {
      this.storeThresholds.labels('high').set(sources.settings.highThresholdRatio);
      this.storeThresholds.labels('low').set(sources.settings.lowThresholdRatio);
      this.queueTimeout.set(sources.settings.pullQueueTimeoutSeconds);
    }
    // Sharing between nodes (all zero when it is off).
    this.peerBytesReceived = new Counter({ name: 'registry_cache_peer_bytes_received_total', help: 'Blob bytes taken from other nodes', registers });
    this.peerBytesSent = new Counter({ name: 'registry_cache_peer_bytes_sent_total', help: 'Blob bytes sent to other nodes', registers });
    this.peerFetches = new Counter({ name: 'registry_cache_peer_fetches_total', help: 'Blob transfers from other nodes by outcome (complete, failed: broke or stalled, mismatch: wrong bytes)', labelNames: ['outcome'], registers });
    this.peerFallbacks = new Counter({ name: 'registry_cache_peer_fallbacks_total', help: 'Transfers from another node that the upstream had to finish', registers });
    this.peerCoordinatorAnswers = new Counter({ name: 'registry_cache_peer_coordinator_answers_total', help: 'What a digest\'s coordinator said before a fill (peer: read from a node, lease: fetch it upstream, unreachable: no answer in time)', labelNames: ['answer'], registers });
    this.peerLeasesLost = new Counter({ name: 'registry_cache_peer_leases_lost_total', help: 'Lease renewals the coordinator refused or did not answer', registers });
    this.peerBlobRequests = new Counter({ name: 'registry_cache_peer_blob_requests_total', help: 'Blob requests from other nodes (served, not-shared: not held or not offered)', labelNames: ['result'], registers });
    this.peerRefused = new Counter({ name: 'registry_cache_peer_requests_refused_total', help: 'Peer requests refused for their signature (missing, malformed, bad-signature, expired, replayed)', labelNames: ['reason'], registers });
    const members = (): { ready: number; notReady: number } => this.peerMembers();
    new Gauge({ name: 'registry_cache_peer_members', help: 'Other nodes sharing blobs with this one, by state', labelNames: ['state'], registers, collect() {
      const m = members();
      this.labels('ready').set(m.ready);
      this.labels('not_ready').set(m.notReady);
    } });
  }

  /** Reads the peer member counts at scrape time. */
  observePeers(members: () => { ready: number; notReady: number }): void {
    this.peerMembers = members;
  }

  /** The exposition text. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

/**
 * Increments of a labelled counter on the request path, kept per label set and added to the counter whenever it is
 * read (a scrape or the status page: prom-client runs a metric's `collect` first), so every reading sees every
 * increment. prom-client's own `inc` builds a key string from the label object, validates it and looks it up in a
 * dictionary on every call: ~0.4 µs, four times per manifest hit.
 */
export class CounterTally<L extends string> {
  private readonly pending = new Map<string, { labels: Partial<Record<L, string>>; n: number }>();

  constructor(private readonly labelNames: readonly L[]) {}

  /**
   * Adds `n` to the label set whose values (in `labelNames` order) are `a`, `b`, `c`: kept by those values joined with
   * a space (no label value here has one); the set's label object is built only the first time.
   */
  add(n: number, a: string, b?: string, c?: string): void {
    const key = b === undefined ? a : c === undefined ? `${a} ${b}` : `${a} ${b} ${c}`;
    const slot = this.pending.get(key);
    if (slot) {
      slot.n += n;
      return;
    }
    const labels: Partial<Record<L, string>> = {};
    [a, b, c].forEach((value, i) => {
      const name = this.labelNames[i];
      if (name !== undefined && value !== undefined) labels[name] = value;
    });
    this.pending.set(key, { labels, n });
  }

  /** Adds what was counted since the last flush to `counter`. */
  flushInto(counter: Counter<L>): void {
    for (const slot of this.pending.values()) {
      if (slot.n === 0) continue;
      counter.inc(slot.labels, slot.n);
      slot.n = 0;
    }
  }
}

function flushing<L extends string>(tally: CounterTally<L>): (this: Counter<L>) => void {
  return function (this: Counter<L>) {
    tally.flushInto(this);
  };
}
