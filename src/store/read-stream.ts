import { open, type FileHandle } from 'node:fs/promises';
import { ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import { Readable, type Writable } from 'node:stream';

/**
 * Set to true on a Writable whose write callback means it no longer holds the chunk (as a socket's does), to let a
 * piped FileRangeStream reuse buffers into it.
 */
export const HANDS_OFF = Symbol('registry-cache.handsOffOnCallback');

/** Buffers a piped reader that reads ahead keeps for reuse: one being written out while the next is read is the steady state. */
const SPARE_BUFFERS = 2;
/** Buffers a piped reader that reads ahead may hold at once: one being written, one being read, one spare. */
export const BUFFERS_READING_AHEAD = SPARE_BUFFERS + 1;

/**
 * Memory that piped readers may hold for reading ahead, shared by the readers given it. A reader with a place reads its
 * next chunk while the last one is written out (up to BUFFERS_READING_AHEAD buffers); one without reads only once its
 * destination has drained, into the one buffer it keeps. Behind a slow client, whose kernel socket buffer still holds
 * plenty when the destination drains, both keep it as busy; what reading ahead buys is a fast client's throughput.
 */
export class ReadBufferBudget {
  private used = 0;

  constructor(readonly bytes: number) {}

  /** Takes `bytes` of the budget when they fit (true), else takes nothing (false). */
  take(bytes: number): boolean {
    if (this.used + bytes > this.bytes) return false;
    this.used += bytes;
    return true;
  }

  /** Gives back what `take` took. */
  give(bytes: number): void {
    this.used -= bytes;
  }
}

/** One chunk to send: the bytes, and the buffer they are a view of when that buffer may be reused afterwards. */
export interface Chunk {
  bytes: Buffer;
  /** Set only for a buffer this stream owns (a positional read), never for bytes shared with others. */
  buffer?: Buffer;
}

/**
 * A Readable of chunks that reads into a few reused buffers when piped into a socket or an HTTP response (how fastify
 * sends a body): a buffer goes back for reuse only once the destination's write callback has said it is written out
 * (for a socket: handed to the kernel), so bytes still queued are never overwritten. Read any other way (`read()`,
 * `'data'`, async iteration), or piped into anything else, every chunk is a buffer the consumer owns.
 * Subclasses say where the next chunk comes from (`readChunk`) and how to let go of what they hold (`_destroy`).
 */
export abstract class RecyclingReadable extends Readable {
  private readonly spare: Buffer[] = [];
  private piped = false;
  /** Reads the next chunk while the last one is written out; without a place in the budget, only after 'drain'. */
  private readsAhead = true;

  /** `readAhead`: the budget that reading ahead when piped takes a place in; without one, it always reads ahead. */
  constructor(
    highWaterMark: number,
    private readonly readAhead?: ReadBufferBudget,
  ) {
    super({ highWaterMark });
  }

  /** The next chunk, read into `reuse` when given and large enough; null at the end. */
  protected abstract readChunk(reuse: Buffer | undefined): Promise<Chunk | null>;

  override _read(): void {
    if (this.piped) return;
    this.readChunk(undefined).then(
      (chunk) => {
        if (!this.destroyed) this.push(chunk ? chunk.bytes : null);
      },
      (err: unknown) => this.destroy(err as Error),
    );
  }

  /**
   * Writes the chunks to `destination` itself, recycling buffers through its write callbacks (see the class comment).
   * Behaves as `Readable.pipe` for the caller: backpressure, `end` (default true), `'end'` and `'close'` here when done,
   * and a destination that closes or fails first destroys this stream (releasing what it holds).
   */
  override pipe<T extends NodeJS.WritableStream>(destination: T, options?: { end?: boolean }): T {
    // Reuse is safe only where a write callback means the bytes left this process's hands (a socket, an HTTP
    // response over one); a Transform or PassThrough calls back while it still holds the chunk to pass on.
    const handsOff = destination instanceof Socket || destination instanceof ServerResponse || (destination as { [HANDS_OFF]?: boolean })[HANDS_OFF] === true;
    if (!handsOff || this.piped || this.readableFlowing !== null || this.readableDidRead) {
      // Already flowing some other way, or a destination that keeps chunks: a plain pipe, without reuse.
      if (this.piped) throw new Error('stream is already piped');
      const piped = super.pipe(destination, options);
      // Readable.pipe only unpipes from a destination that closes first: release the source as the reuse path does.
      destination.once('close', () => {
        if (!this.readableEnded && !this.destroyed) this.destroy();
      });
      return piped;
    }
    this.piped = true;
    const budget = this.readAhead;
    if (budget) {
      const bytes = BUFFERS_READING_AHEAD * this.readableHighWaterMark;
      this.readsAhead = budget.take(bytes);
      if (this.readsAhead) this.once('close', () => budget.give(bytes));
    }
    destination.emit('pipe', this);
    void this.pumpInto(destination as unknown as Writable, options?.end !== false);
    return destination;
  }

  private async pumpInto(destination: Writable, end: boolean): Promise<void> {
    let next = this.readChunk(this.spare.pop());
    try {
      for (;;) {
        const chunk = await next;
        if (!chunk || this.destroyed) break;
        if (destination.destroyed || destination.writableEnded) {
          this.destroy();
          return;
        }
        if (this.readsAhead) {
          // The next read runs while this chunk is written out. It gets a spare buffer only if one was given back.
          next = this.readChunk(this.spare.pop());
          next.catch(() => undefined);
        }
        const { buffer } = chunk;
        const spares = this.readsAhead ? SPARE_BUFFERS : 1;
        const more = destination.write(
          chunk.bytes,
          buffer === undefined
            ? undefined
            : (err?: Error | null) => {
                if (!err && this.spare.length < spares) this.spare.push(buffer);
              },
        );
        if (!more) await this.drained(destination);
        // Drained, the write's callback has run (it comes right after 'drain'): the next read reuses its buffer.
        if (!this.readsAhead) next = this.readChunk(this.spare.pop());
      }
    } catch (err) {
      this.destroy(err as Error);
      return;
    }
    if (this.destroyed) return;
    if (destination.destroyed) {
      this.destroy();
      return;
    }
    if (end) destination.end();
    // Finishes this side as a Readable does: 'end', then (autoDestroy) 'close' follows.
    this.push(null);
    this.resume();
  }

  /** Resolves on 'drain', or when either side closes or the destination fails (the loop then stops). */
  private drained(destination: Writable): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        destination.off('drain', done);
        destination.off('close', done);
        destination.off('error', done);
        this.off('close', done);
        resolve();
      };
      destination.on('drain', done);
      destination.on('close', done);
      destination.on('error', done);
      this.on('close', done);
      if (destination.destroyed || this.destroyed) done();
    });
  }
}

/**
 * Streams bytes `[start, end]` (inclusive) of a file, as `fs.createReadStream` does, reusing its read buffers when
 * piped (see RecyclingReadable). Ends at end of file if that comes before `end`, like `createReadStream`.
 */
export class FileRangeStream extends RecyclingReadable {
  private readonly opening: Promise<FileHandle | undefined>;
  private handle: FileHandle | undefined;
  private position: number;
  private readonly last: number;

  constructor(
    path: string,
    private readonly chunkSize: number,
    range: { start?: number | undefined; end?: number | undefined } = {},
  ) {
    super(chunkSize);
    this.position = range.start ?? 0;
    this.last = range.end ?? Number.POSITIVE_INFINITY;
    this.opening = open(path, 'r').then(
      (handle) => {
        // Destroyed while opening: nobody will close it otherwise.
        if (this.destroyed) {
          void handle.close().catch(() => undefined);
          return undefined;
        }
        this.handle = handle;
        return handle;
      },
      (err: unknown) => {
        this.destroy(err as Error);
        return undefined;
      },
    );
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // After the open settles, so a handle opened meanwhile is closed too; FileHandle.close waits for a read in flight.
    void this.opening.then(async () => {
      const handle = this.handle;
      this.handle = undefined;
      try {
        await handle?.close();
      } catch (err) {
        error ??= err as Error;
      }
      callback(error);
    });
  }

  /** Reads the next chunk into `reuse` (or a new buffer); null at the end of the range or of the file. */
  protected async readChunk(reuse: Buffer | undefined): Promise<Chunk | null> {
    const handle = this.handle ?? (await this.opening);
    const wanted = Math.min(this.chunkSize, this.last - this.position + 1);
    if (!handle || this.destroyed || wanted <= 0) return null;
    // A range only shrinks, so a buffer sized for the first read fits every later one.
    const buffer = reuse && reuse.length >= wanted ? reuse : Buffer.allocUnsafe(wanted);
    const { bytesRead } = await handle.read(buffer, 0, wanted, this.position);
    if (bytesRead === 0) return null;
    this.position += bytesRead;
    return { buffer, bytes: buffer.subarray(0, bytesRead) };
  }
}
