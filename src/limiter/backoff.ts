import { OciError, isOciError } from '../oci/errors.js';

/** The kubelet's image pull back-off: 10 s, doubling, capped at its compiled-in 300 s. */
export const INITIAL_BACKOFF_MS = 10_000;
export const MAX_BACKOFF_MS = 300_000;
/** An entry quiet for this long is forgotten (the kubelet's back-off GC): the next failure starts again at 10 s. */
const FORGET_AFTER_MS = 2 * MAX_BACKOFF_MS;
/** How many entries may pile up before quiet ones are swept. */
const SWEEP_ABOVE = 1_000;

interface Entry {
  delayMs: number;
  until: number;
  error: OciError;
}

/** Whether an upstream failure starts or extends a back-off: 404, 5xx, timeouts and upstream 429s (not auth). */
export function countsForBackoff(err: unknown): err is OciError {
  if (!isOciError(err)) return false;
  const detail = err.detail as { reason?: unknown; backingOff?: unknown } | undefined;
  // Our own queue timeout, or an answer from the back-off itself, says nothing new about the upstream.
  if (detail?.reason === 'pull queue' || detail?.backingOff === true) return false;
  return err.status === 404 || err.status >= 500 || err.code === 'TOOMANYREQUESTS';
}

/**
 * A negative cache per (registry, repository, reference): after an upstream failure, the same error is answered
 * without asking the upstream until the back-off ends. A success resets it.
 */
export class PullBackoff {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly now: () => number = Date.now) {}

  /** The error to answer with while `key` is backing off, with Retry-After; undefined when not. */
  check(key: string): OciError | undefined {
    const entry = this.live(key);
    if (!entry) return undefined;
    const remaining = entry.until - this.now();
    if (remaining <= 0) return undefined;
    return new OciError(entry.error.code, entry.error.message, {
      status: entry.error.status,
      detail: { ...(entry.error.detail as object | undefined), backingOff: true, backoffSeconds: Math.ceil(entry.delayMs / 1000) },
      headers: { ...entry.error.headers, 'retry-after': String(Math.ceil(remaining / 1000)) },
    });
  }

  /** Records a failure: first 10 s, then double the previous delay, up to 300 s; an upstream Retry-After is a floor. */
  failure(key: string, error: OciError): void {
    const previous = this.live(key);
    if (this.entries.size > SWEEP_ABOVE) this.sweep();
    let delayMs = previous ? Math.min(previous.delayMs * 2, MAX_BACKOFF_MS) : INITIAL_BACKOFF_MS;
    const retryAfter = Number(error.headers['retry-after']);
    if (Number.isFinite(retryAfter) && retryAfter > 0) delayMs = Math.max(delayMs, retryAfter * 1000);
    this.entries.set(key, { delayMs, until: this.now() + delayMs, error });
  }

  /** Clears the back-off after a success. */
  success(key: string): void {
    this.entries.delete(key);
  }

  /** The current delay for a key (tests and debug). */
  delayFor(key: string): number | undefined {
    return this.live(key)?.delayMs;
  }

  /** Number of remembered entries. */
  get size(): number {
    return this.entries.size;
  }

  private live(key: string): Entry | undefined {
    const entry = this.entries.get(key);
    if (entry && this.now() - entry.until > FORGET_AFTER_MS) {
      this.entries.delete(key);
      return undefined;
    }
    return entry;
  }

  private sweep(): void {
    const now = this.now();
    for (const [k, e] of this.entries) if (now - e.until > FORGET_AFTER_MS) this.entries.delete(k);
  }
}
