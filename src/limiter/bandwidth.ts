import { Readable } from 'node:stream';

/** A token bucket shared by every upstream transfer: at most `bytesPerSecond` on average, one second of burst. */
export class BandwidthLimit {
  private tokens: number;
  private last = performance.now();
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly bytesPerSecond: number) {
    this.tokens = bytesPerSecond;
  }

  /** Waits until `bytes` may pass; takers are served in arrival order. */
  take(bytes: number): Promise<void> {
    const turn = this.queue.then(async () => {
      const now = performance.now();
      this.tokens = Math.min(this.bytesPerSecond, this.tokens + ((now - this.last) / 1000) * this.bytesPerSecond);
      this.last = now;
      this.tokens -= bytes;
      // In debt: wait until the bucket would be back at zero.
      if (this.tokens < 0) await new Promise((r) => setTimeout(r, (-this.tokens / this.bytesPerSecond) * 1000));
    });
    this.queue = turn;
    return turn;
  }

  /** `body`, paced by this limit (destroying the result destroys `body`). */
  throttle(body: Readable): Readable {
    const limit = this;
    async function* paced(): AsyncGenerator<Buffer> {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        await limit.take(chunk.length);
        yield chunk;
      }
    }
    const out = Readable.from(paced(), { objectMode: false });
    out.once('close', () => body.destroy());
    return out;
  }
}
