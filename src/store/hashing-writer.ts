import { Writable } from 'node:stream';
import type { FileHandle } from 'node:fs/promises';
import { createDigester, type DigestAlgorithm } from '../oci/digest.js';

/** Bytes accepted but not yet on the file before the writer stops taking more (the source then waits). */
const DEFAULT_PENDING_LIMIT = 1024 * 1024;

/** Options of a {@link HashingWriter}. */
export interface HashingWriterOptions {
  /** The body may not be longer than `size`; the first chunk past it fails the writer with `error()`. */
  limit?: { size: number; error: () => Error };
  /** Called with every accepted chunk and its offset, once hashed and before it reaches the file. */
  onChunk?: (chunk: Buffer, offset: number) => void;
  /**
   * Called once the body ended and is hashed, with its digest (`algorithm:hex`), while the file may still be catching
   * up; throwing fails the writer.
   */
  onDigest?: (digest: string) => void;
  /** Called after each write to the file, once `onDisk` grew. */
  onWritten?: () => void;
  /** Unwritten bytes the writer holds before it makes its source wait (default 1 MiB). */
  pendingLimit?: number;
}

/**
 * Hashes a body while writing it to a temp file at increasing offsets: the one writer behind every download into the
 * store (a fill, a preload). Chunks are accepted as they come (hashed, shown to `onChunk`) and written in batches, one
 * positional `writev` at a time, so the source is never held up by one thread-pool round trip per chunk; it waits only
 * when `pendingLimit` bytes are not yet on the file.
 */
export class HashingWriter extends Writable {
  /** Bytes accepted and hashed so far. */
  received = 0;
  /** Bytes written to the file so far (in the page cache; durable only after the store's commit). */
  onDisk = 0;

  private readonly hash;
  private readonly queue: Buffer[] = [];
  private flushing = false;
  private failure: Error | undefined;
  /** The callback of the write that found the pending limit reached: the source waits for it. */
  private waiting: ((err?: Error | null) => void) | undefined;
  private finishing: ((err?: Error | null) => void) | undefined;
  private hex: string | undefined;
  private readonly pendingLimit: number;

  constructor(
    private readonly handle: FileHandle,
    readonly algorithm: DigestAlgorithm,
    private readonly options: HashingWriterOptions = {},
  ) {
    super({ highWaterMark: 256 * 1024 });
    this.hash = createDigester(algorithm);
    this.pendingLimit = options.pendingLimit ?? DEFAULT_PENDING_LIMIT;
  }

  /** The digest (`algorithm:hex`) of the whole body; only once it ended ('finish', or from `onDigest`). */
  digest(): string {
    if (this.hex === undefined) throw new Error('HashingWriter.digest() before finish');
    return `${this.algorithm}:${this.hex}`;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (this.failure) return callback(this.failure);
    const limit = this.options.limit;
    if (limit && this.received + chunk.length > limit.size) return callback(limit.error());
    this.hash.update(chunk);
    const offset = this.received;
    this.received += chunk.length;
    this.queue.push(chunk);
    this.options.onChunk?.(chunk, offset);
    if (!this.flushing) void this.flush();
    if (this.received - this.onDisk > this.pendingLimit) this.waiting = callback;
    else callback();
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (this.failure) return callback(this.failure);
    this.hex = this.hash.digest('hex');
    try {
      this.options.onDigest?.(this.digest());
    } catch (err) {
      return callback(err as Error);
    }
    // 'finish' (the end of a pipeline) waits for the file to hold every byte.
    if (this.flushing) this.finishing = callback;
    else callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.failure ??= err ?? new Error('hashing writer destroyed');
    callback(err);
  }

  /** Writes what is queued, batch after batch, until the queue is empty. */
  private async flush(): Promise<void> {
    this.flushing = true;
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0);
        let bytes = 0;
        for (const b of batch) bytes += b.length;
        let done = 0;
        while (done < bytes) {
          // A short write (rare on a regular file) continues with what is left of the batch.
          const rest = done === 0 ? batch : remainder(batch, done);
          const { bytesWritten } = await this.handle.writev(rest, this.onDisk);
          if (bytesWritten === 0) throw new Error('temp file write made no progress');
          done += bytesWritten;
          this.onDisk += bytesWritten;
        }
        this.options.onWritten?.();
        if (this.waiting && this.received - this.onDisk <= this.pendingLimit) {
          const resume = this.waiting;
          this.waiting = undefined;
          resume();
        }
      }
    } catch (err) {
      this.failure = err as Error;
      const waiter = this.waiting ?? this.finishing;
      this.waiting = this.finishing = undefined;
      if (waiter) waiter(this.failure);
      else this.destroy(this.failure);
      return;
    } finally {
      this.flushing = false;
    }
    if (this.finishing) {
      const finish = this.finishing;
      this.finishing = undefined;
      finish();
    }
  }
}

/** The buffers of `batch` after its first `skip` bytes. */
function remainder(batch: Buffer[], skip: number): Buffer[] {
  const rest: Buffer[] = [];
  for (const b of batch) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    rest.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return rest;
}
