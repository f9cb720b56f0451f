import { fullCollection } from './full-collection.js';

/** What the guard watches and runs; both are injectable for tests. */
export interface ExternalMemoryGuardOptions {
  /** Growth of external memory since the last collection that asks for the next one. */
  limitBytes: number;
  /** Bytes held outside V8's heap now (Buffers' memory among them). */
  external?: () => number;
  /** A full collection; undefined when the process was started without `--expose-gc` (then the guard does nothing). */
  collect?: (() => Promise<void>) | undefined;
}

/**
 * Keeps the garbage of a fast download from piling up outside V8's heap. Every chunk a download receives is its own
 * ArrayBuffer; when readers keep chunks alive long enough for V8 to promote them (a herd of clients on one cold blob),
 * only a full collection frees them, and V8 starts one by itself only once external memory grew 64 MiB past the last.
 * That was the herd's worst peak RSS: 64 hashing clients on a cold 256 MiB blob reached 211-226 MB in runs that usually
 * stay near 165-180 MB, external memory rising 56 -> 110 MB within half a second. Called as bytes pass, `check` runs one
 * full collection (in a task of its own) whenever external memory grew by `limitBytes` since the lowest level seen
 * since the last one.
 */
export class ExternalMemoryGuard {
  private readonly external: () => number;
  private readonly collect: (() => Promise<void>) | undefined;
  private baseline: number;
  private collecting = false;

  constructor(private readonly options: ExternalMemoryGuardOptions) {
    this.external = options.external ?? ((): number => process.memoryUsage().external);
    this.collect = 'collect' in options ? options.collect : fullCollection('regular');
    this.baseline = this.external();
  }

  /** Starts a collection when external memory grew by the limit since the last one (or since the start). */
  check(): void {
    if (!this.collect || this.collecting) return;
    const now = this.external();
    // What survives a collection is live (readers' buffers): only growth beyond it is a reason for the next one.
    if (now < this.baseline) this.baseline = now;
    if (now - this.baseline < this.options.limitBytes) return;
    this.collecting = true;
    this.collect().then(
      () => {
        this.baseline = this.external();
        this.collecting = false;
      },
      () => {
        this.collecting = false;
      },
    );
  }
}
