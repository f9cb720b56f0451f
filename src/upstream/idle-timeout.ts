import { Readable } from 'node:stream';
import { errorForBodyFailure, errorForTransportFailure } from './errors.js';

/**
 * `body`, failing with a 504 when no bytes arrive for `ms`: undici's own bodyTimeout runs on a coarse timer wheel
 * (about a second), too loose for an idle limit an operator sets in milliseconds. Its transport failures become
 * OciErrors, so a fill that fails mid-body answers and backs off like one refused before the headers.
 * `floorBytes` (default 1): the bytes that must arrive within each `ms` window, so a trickle can count as a stall.
 * Destroying the result destroys `body`.
 */
export function withIdleTimeout(body: Readable, ms: number, registry: string, options: { floorBytes?: number } = {}): Readable {
  const floor = options.floorBytes ?? 1;
  const chunks = (body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  const nextChunk = (): Promise<IteratorResult<Buffer>> =>
    chunks.next().catch((err: unknown) => {
      throw errorForBodyFailure(err, registry);
    });
  async function* watched(): AsyncGenerator<Buffer> {
    try {
      let deadline = Date.now() + ms;
      let progress = 0;
      for (;;) {
        // 0 means no idle limit, as for undici.
        if (ms <= 0) {
          const next = await nextChunk();
          if (next.done) return;
          yield next.value;
          continue;
        }
        let timer: NodeJS.Timeout | undefined;
        const idle = new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(errorForTransportFailure(Object.assign(new Error('upstream body idle'), { code: 'UND_ERR_BODY_TIMEOUT' }), registry)),
            Math.max(0, deadline - Date.now()),
          );
        });
        try {
          const next = await Promise.race([nextChunk(), idle]);
          if (next.done) return;
          progress += next.value.length;
          if (progress >= floor) {
            progress = 0;
            deadline = Date.now() + ms;
          }
          yield next.value;
        } finally {
          clearTimeout(timer);
        }
      }
    } finally {
      body.destroy();
    }
  }
  const out = Readable.from(watched(), { objectMode: false });
  // Destroying a Readable.from whose generator never started skips the generator's finally: pass it on by hand.
  out.once('close', () => body.destroy());
  return out;
}
