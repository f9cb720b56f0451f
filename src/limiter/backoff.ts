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
 * Whether a failure says the same to every client whatever its credential: the upstream is down, slow or broken
 * (5xx, timeouts, unreachable, wrong bodies). A 404, a 429 or a refusal may be an answer to this credential only
 * (registries answer 404 to clients that may not see a repository, and rate-limit per account).
 */
function sharedByAllCredentials(error: OciError): boolean {
  return error.status >= 500 && error.code !== 'UNAUTHORIZED' && error.code !== 'DENIED';
}

/** The class under which credential-independent failures are kept (not a credential key: those are base64url). */
const EVERYONE = '*';

/**
 * A negative cache per (registry, repository, reference) and credential class: after an upstream failure, the same
 * error is answered without asking the upstream until the back-off ends; a success resets it. Only requests that
 * would get the same answer share an entry: failures that depend on the credential (404, 429) back off that
 * credential class (anonymous, or one credential's in-memory key) alone; an outage backs off everyone.
 */
export class PullBackoff {
  private readonly entries = new Map<string, Map<string, Entry>>();
  private count = 0;

  constructor(private readonly now: () => number = Date.now) {}

  /** The error to answer `credentialClass` with while `key` is backing off, with Retry-After; undefined when not. */
  check(key: string, credentialClass = ''): OciError | undefined {
    let entry: Entry | undefined;
    for (const e of [this.live(key, EVERYONE), this.live(key, credentialClass)]) if (e && (!entry || e.until > entry.until)) entry = e;
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
  failure(key: string, error: OciError, credentialClass = ''): void {
    const cls = sharedByAllCredentials(error) ? EVERYONE : credentialClass;
    const previous = this.live(key, cls);
    if (this.count > SWEEP_ABOVE) this.sweep();
    let delayMs = previous ? Math.min(previous.delayMs * 2, MAX_BACKOFF_MS) : INITIAL_BACKOFF_MS;
    const retryAfter = Number(error.headers['retry-after']);
    if (Number.isFinite(retryAfter) && retryAfter > 0) delayMs = Math.max(delayMs, retryAfter * 1000);
    let classes = this.entries.get(key);
    if (!classes) this.entries.set(key, (classes = new Map()));
    if (!classes.has(cls)) this.count++;
    classes.set(cls, { delayMs, until: this.now() + delayMs, error });
  }

  /**
   * Clears the back-off after a success of `credentialClass` (and the outage entry: the upstream answered); without
   * a class, every entry of the key.
   */
  success(key: string, credentialClass?: string): void {
    const classes = this.entries.get(key);
    if (!classes) return;
    for (const cls of credentialClass === undefined ? [...classes.keys()] : [EVERYONE, credentialClass]) if (classes.delete(cls)) this.count--;
    if (classes.size === 0) this.entries.delete(key);
  }

  /** The current delay for a key (tests and debug): for one credential class, or the longest of any. */
  delayFor(key: string, credentialClass?: string): number | undefined {
    const classes = credentialClass === undefined ? [...(this.entries.get(key)?.keys() ?? [])] : [EVERYONE, credentialClass];
    let delay: number | undefined;
    for (const cls of classes) {
      const e = this.live(key, cls);
      if (e && (delay === undefined || e.delayMs > delay)) delay = e.delayMs;
    }
    return delay;
  }

  /** Number of remembered entries. */
  get size(): number {
    return this.count;
  }

  private live(key: string, cls: string): Entry | undefined {
    const classes = this.entries.get(key);
    const entry = classes?.get(cls);
    if (classes && entry && this.now() - entry.until > FORGET_AFTER_MS) {
      classes.delete(cls);
      this.count--;
      if (classes.size === 0) this.entries.delete(key);
      return undefined;
    }
    return entry;
  }

  private sweep(): void {
    const now = this.now();
    for (const [key, classes] of this.entries) {
      for (const [cls, e] of classes) {
        if (now - e.until <= FORGET_AFTER_MS) continue;
        classes.delete(cls);
        this.count--;
      }
      if (classes.size === 0) this.entries.delete(key);
    }
  }
}
