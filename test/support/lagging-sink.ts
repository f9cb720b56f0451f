import { Writable } from 'node:stream';
import { HANDS_OFF } from '../../src/store/read-stream.js';

/**
 * A destination that behaves like a socket under load: it accepts writes up to a large high-water mark without
 * finishing them, finishes each one a few turns of the event loop later, and only then "sends" its bytes. A chunk that
 * changed between write() and the end of its write is what a reused buffer overwritten too early looks like.
 */
export class LaggingSink extends Writable {
  // It copies each chunk before calling back, as a socket hands it to the kernel.
  readonly [HANDS_OFF] = true;
  readonly received: Buffer[] = [];
  readonly arrays = new Set<ArrayBufferLike>();
  overwritten = 0;
  private pending = 0;

  constructor(
    private readonly lagTurns: number,
    highWaterMark = 8 * 1024 * 1024,
  ) {
    super({ highWaterMark });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.arrays.add(chunk.buffer);
    const copy = Buffer.from(chunk);
    this.pending++;
    let turns = this.lagTurns + (this.pending % 3);
    const later = (): void => {
      if (--turns > 0) {
        setImmediate(later);
        return;
      }
      if (!chunk.equals(copy)) this.overwritten++;
      this.received.push(copy);
      this.pending--;
      callback();
    };
    // Unlike a socket's _write, Writable calls _write one at a time: hand the next one over at once, finish this later.
    setImmediate(later);
  }
}
