import pLimit, { type LimitFunction } from 'p-limit';
import { OciError } from '../oci/errors.js';

/** A transfer's hold on its image's slot. */
export interface PullLease {
  /** Adds another name for the same image (e.g. the digest a tag resolved to). */
  alias(key: string): void;
  /** Notes an image manifest of this pull; the pull is complete once all of their blobs are stored. */
  noteManifest(digest: string): void;
  /** Ends this transfer's part of the pull. */
  release(): void;
}

/** One image pull: all its upstream transfers share one slot. */
interface ImagePull {
  keys: Set<string>;
  transfers: number;
  state: 'queued' | 'active' | 'done';
  admitted: Promise<void>;
  freeSlot: (() => void) | undefined;
  linger: NodeJS.Timeout | undefined;
  manifests: Set<string>;
  queuedAt: number;
  admittedAt: number | undefined;
}

/** What the limiter is doing, for the debug endpoint and metrics. */
export interface PullLimiterState {
  limit: number | null;
  active: { keys: string[]; transfers: number; activeForMs: number }[];
  queued: { keys: string[]; waitingForMs: number }[];
  waits: { count: number; totalMs: number; maxMs: number };
}

/** Retry-After suggested to a client whose pull waited too long in the queue. */
const QUEUE_RETRY_AFTER_S = 10;

/**
 * The kubelet's parallel-pull limit, at the registry: at most `maxParallel` images transfer from upstreams at once
 * (p-limit holds the slots, FIFO); manifest and blob misses of an admitted image share its slot; waiters are held,
 * not failed, until `queueTimeoutMs`. A pull ends when its transfers are done and its image manifests' blobs are all
 * stored, or `lingerMs` after its last transfer (the client may still be about to ask for the next layer).
 */
export class PullLimiter {
  private readonly limit: LimitFunction;
  private readonly byKey = new Map<string, ImagePull>();
  private readonly waits = { count: 0, totalMs: 0, maxMs: 0 };

  constructor(
    private readonly options: {
      maxParallel: number | undefined;
      queueTimeoutMs: number;
      lingerMs: number;
      isComplete: (manifests: ReadonlySet<string>) => boolean;
      onWait?: (seconds: number) => void;
    },
  ) {
    this.limit = pLimit(options.maxParallel ?? Number.POSITIVE_INFINITY);
  }

  /** Joins the pull any of `keys` names, or queues a new one; resolves once it holds a slot (or rejects on `signal`). */
  async acquire(keys: readonly string[], signal?: AbortSignal): Promise<PullLease> {
    signal?.throwIfAborted();
    let pull: ImagePull | undefined;
    for (const k of keys) {
      const found = this.byKey.get(k);
      if (found && found.state !== 'done') {
        pull = found;
        break;
      }
    }
    pull ??= this.enqueue();
    const current = pull;
    for (const k of keys) this.addKey(current, k);
    current.transfers++;
    if (current.linger) {
      clearTimeout(current.linger);
      current.linger = undefined;
    }
    try {
      if (signal) {
        let onAbort: (() => void) | undefined;
        const aborted = new Promise<never>((_, reject) => {
          onAbort = () => reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
          signal.addEventListener('abort', onAbort, { once: true });
        });
        try {
          await Promise.race([current.admitted, aborted]);
        } finally {
          if (onAbort) signal.removeEventListener('abort', onAbort);
        }
      } else {
        await current.admitted;
      }
    } catch (err) {
      current.transfers--;
      // The last waiter of a still-queued pull gave up: drop it so its slot goes to the next in line.
      if (current.transfers === 0 && current.state === 'queued') this.finish(current);
      throw err;
    }
    let released = false;
    return {
      alias: (key) => this.addKey(current, key),
      noteManifest: (digest) => current.manifests.add(digest),
      release: () => {
        if (released) return;
        released = true;
        current.transfers--;
        if (current.transfers === 0) this.maybeFinish(current);
      },
    };
  }

  /** Images waiting for a slot. */
  get queued(): number {
    return new Set([...this.byKey.values()].filter((p) => p.state === 'queued')).size;
  }

  /** A snapshot for `/debug/pulls`. */
  state(): PullLimiterState {
    const now = Date.now();
    const pulls = new Set([...this.byKey.values()].filter((p) => p.state !== 'done'));
    return {
      limit: this.options.maxParallel ?? null,
      active: [...pulls].filter((p) => p.state === 'active').map((p) => ({ keys: [...p.keys], transfers: p.transfers, activeForMs: now - (p.admittedAt ?? now) })),
      queued: [...pulls].filter((p) => p.state === 'queued').map((p) => ({ keys: [...p.keys], waitingForMs: now - p.queuedAt })),
      waits: { ...this.waits },
    };
  }

  private addKey(pull: ImagePull, key: string): void {
    pull.keys.add(key);
    this.byKey.set(key, pull);
  }

  private enqueue(): ImagePull {
    const pull: ImagePull = {
      keys: new Set(),
      transfers: 0,
      state: 'queued',
      admitted: Promise.resolve(),
      freeSlot: undefined,
      linger: undefined,
      manifests: new Set(),
      queuedAt: Date.now(),
      admittedAt: undefined,
    };
    pull.admitted = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (pull.state !== 'queued') return;
        this.finish(pull);
        reject(
          new OciError('TOOMANYREQUESTS', 'too many image pulls in progress on this node; retry later', {
            detail: { reason: 'pull queue', waitedMs: Date.now() - pull.queuedAt },
            headers: { 'retry-after': String(QUEUE_RETRY_AFTER_S) },
          }),
        );
      }, this.options.queueTimeoutMs);
      timer.unref();
      void this.limit(
        () =>
          new Promise<void>((free) => {
            clearTimeout(timer);
            // Timed out while queued: pass the slot straight on (p-limit has no way to drop one waiter).
            if (pull.state === 'done') return free();
            pull.state = 'active';
            pull.admittedAt = Date.now();
            pull.freeSlot = free;
            const waited = pull.admittedAt - pull.queuedAt;
            this.waits.count++;
            this.waits.totalMs += waited;
            this.waits.maxMs = Math.max(this.waits.maxMs, waited);
            this.options.onWait?.(waited / 1000);
            resolve();
          }),
      );
    });
    pull.admitted.catch(() => undefined);
    return pull;
  }

  private maybeFinish(pull: ImagePull): void {
    if (pull.state !== 'active') return;
    // Nothing to wait for (a lone blob), or everything the image needs is stored: the slot is free now.
    if (pull.manifests.size === 0 || this.options.isComplete(pull.manifests)) return this.finish(pull);
    pull.linger = setTimeout(() => {
      if (pull.transfers === 0) this.finish(pull);
    }, this.options.lingerMs);
    pull.linger.unref();
  }

  private finish(pull: ImagePull): void {
    if (pull.state === 'done') return;
    pull.state = 'done';
    if (pull.linger) clearTimeout(pull.linger);
    for (const k of pull.keys) if (this.byKey.get(k) === pull) this.byKey.delete(k);
    pull.freeSlot?.();
  }
}
