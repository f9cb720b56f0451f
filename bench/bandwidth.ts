import { Transform } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * One link's bandwidth shared by every stream through it: a virtual clock of when the link is next free. Each chunk
 * books the link for `bytes / rate` after the previous booking and is released when its slot ends, so streams share
 * the rate in the order their chunks arrive. A link idle for a while is booked from at most `slackMs` ago: timers
 * fire late (a 1.3 ms wait often takes 2), and without that credit every late timer would be bandwidth lost for good;
 * with it, no window of time carries more than `rate × (window + slackMs)`.
 */
export class SharedBandwidth {
  private freeAt = 0;

  constructor(
    readonly bytesPerSecond: number,
    private readonly now: () => number = () => performance.now(),
    private readonly slackMs = 20,
  ) {
    if (!(bytesPerSecond > 0)) throw new Error(`bandwidth must be positive, got ${bytesPerSecond}`);
  }

  /** Books the link for `bytes` after everything booked before; returns the milliseconds until they may go on. */
  book(bytes: number): number {
    const now = this.now();
    this.freeAt = Math.max(now - this.slackMs, this.freeAt) + (bytes / this.bytesPerSecond) * 1000;
    return Math.max(0, this.freeAt - now);
  }

  /** Books the link for `bytes`; resolves when they may go on. */
  async take(bytes: number): Promise<void> {
    const wait = this.book(bytes);
    // Timers are about 1 ms coarse; a shorter wait would only add jitter.
    if (wait >= 1) await sleep(wait);
  }
}

/** A pass-through stream that holds each chunk until `bandwidth` lets it go. */
export function throttled(bandwidth: SharedBandwidth): Transform {
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      bandwidth.take(chunk.length).then(() => done(null, chunk), done);
    },
  });
}
