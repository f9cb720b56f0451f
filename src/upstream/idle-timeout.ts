import { Readable } from 'node:stream';
import { errorForBodyFailure, errorForTransportFailure } from './errors.js';

/**
 * `body`, failing with a 504 when no bytes arrive for `ms`: undici's own bodyTimeout runs on a coarse timer wheel
 * (about a second), too loose for an idle limit an operator sets in milliseconds. Its transport failures become
 * OciErrors, so a fill that fails mid-body answers and backs off like one refused before the headers.
 * `floorBytes` (default 1): the bytes that must arrive within each `ms` window, so a trickle can count as a stall.
 * Time the consumer spends not reading (backpressure) is never the upstream's stall. A failure reaches the consumer
 * after the bytes that came before it. Destroying the result destroys `body`.
 */
export function withIdleTimeout(body: Readable, ms: number, registry: string, options: { floorBytes?: number } = {}): Readable {
  const floor = options.floorBytes ?? 1;
  const chunks = (body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  let progress = 0;
  let lastProgress = Date.now();
  let waitingOnUpstream = false;
  let timer: NodeJS.Timeout | undefined;
  // One timer per `ms` that checks progress, not a promise race and a timer per chunk (16k chunks per cold GiB).
  const check = (): void => {
    const now = Date.now();
    if (!waitingOnUpstream) lastProgress = now;
    if (now - lastProgress >= ms) {
      body.destroy(errorForTransportFailure(Object.assign(new Error('upstream body idle'), { code: 'UND_ERR_BODY_TIMEOUT' }), registry));
      return;
    }
    timer = setTimeout(check, lastProgress + ms - now);
  };
  async function* watched(): AsyncGenerator<Buffer> {
    // 0 means no idle limit, as for undici.
    if (ms > 0) {
      lastProgress = Date.now();
      timer = setTimeout(check, ms);
    }
    try {
      for (;;) {
        waitingOnUpstream = true;
        let next: IteratorResult<Buffer>;
        try {
          next = await chunks.next();
        } catch (err) {
          throw errorForBodyFailure(err, registry);
        }
        waitingOnUpstream = false;
        if (next.done) return;
        progress += next.value.length;
        if (progress >= floor) {
          progress = 0;
          lastProgress = Date.now();
        }
        yield next.value;
      }
    } finally {
      clearTimeout(timer);
      body.destroy();
    }
  }
  const out = Readable.from(watched(), { objectMode: false });
  // Destroying a Readable.from whose generator never started skips the generator's finally: pass it on by hand.
  out.once('close', () => {
    clearTimeout(timer);
    body.destroy();
  });
  return out;
}
