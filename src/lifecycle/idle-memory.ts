import { fullCollection } from './full-collection.js';

/** What the idle collector watches and does; `collect` defaults to V8's memory-reducing collection. */
export interface IdleCollectorOptions {
  /** Quiet time after work before memory is given back. */
  quietMs: number;
  /** A number that changes whenever work arrives (requests served). */
  activity: () => number;
  /** Work still running with no new requests (downloads in progress). */
  busy: () => boolean;
  /** The collection; undefined when the process was started without `--expose-gc` (then nothing runs). */
  collect?: (() => Promise<void>) | undefined;
  /**
   * Resident bytes the process must have grown by since the last collection (or its start) for a quiet spell to be
   * worth one (default 16 MiB): probes and scrapes every few seconds are work too, and grow nothing.
   */
  minGrowthBytes?: number;
  /** Resident bytes now (tests pass their own). */
  rss?: () => number;
  onCollected?: (info: { ms: number; rssBefore: number; rssAfter: number }) => void;
}

/**
 * Gives memory back once the server goes quiet. A burst of pulls grows V8's heap and the Buffers behind it, and V8
 * keeps those pages (a full collection happens only under allocation pressure, which a quiet server no longer has), so
 * a node's cache would hold its peak between bursts. After `quietMs` with no new request and no download running, and
 * once the process has grown by `minGrowthBytes` since the last collection, it runs one memory-reducing collection;
 * then nothing more until the next burst. `tick` is driven by a timer, or by tests with their own clock.
 */
export class IdleCollector {
  private lastActivity: number;
  private quietSince: number;
  /** Work happened since the last collection. */
  private dirty = false;
  private collecting = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly collect: (() => Promise<void>) | undefined;
  private readonly rss: () => number;
  /** Resident bytes after the last collection, or at start. */
  private baseline: number;

  constructor(
    private readonly options: IdleCollectorOptions,
    now = Date.now(),
  ) {
    this.collect = 'collect' in options ? options.collect : fullCollection('last-resort');
    this.rss = options.rss ?? ((): number => process.memoryUsage.rss());
    this.baseline = this.rss();
    this.lastActivity = options.activity();
    this.quietSince = now;
  }

  /** Whether a collection can run at all (the process has `gc`). */
  get enabled(): boolean {
    return this.collect !== undefined;
  }

  /** Checks every quietMs / 2 on an unref'd timer; does nothing without a collection to run. */
  start(): this {
    if (this.enabled && !this.timer) {
      this.timer = setInterval(() => void this.tick(), Math.max(50, this.options.quietMs / 2));
      this.timer.unref();
    }
    return this;
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One check at `now`; resolves when a collection it started has finished. */
  async tick(now = Date.now()): Promise<void> {
    const activity = this.options.activity();
    if (activity !== this.lastActivity || this.options.busy()) {
      this.lastActivity = activity;
      this.quietSince = now;
      this.dirty = true;
      return;
    }
    if (!this.dirty || this.collecting || !this.collect || now - this.quietSince < this.options.quietMs) return;
    this.dirty = false;
    const rssBefore = this.rss();
    // A burst that grew little leaves nothing worth a full collection; its growth still counts towards the next.
    if (rssBefore - this.baseline < (this.options.minGrowthBytes ?? 16 * 1024 * 1024)) return;
    this.collecting = true;
    const started = performance.now();
    try {
      await this.collect();
      const rssAfter = this.rss();
      this.baseline = rssAfter;
      this.options.onCollected?.({ ms: performance.now() - started, rssBefore, rssAfter });
    } finally {
      this.collecting = false;
    }
  }
}
