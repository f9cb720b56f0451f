import { EventEmitter } from 'node:events';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { FileHandle } from 'node:fs/promises';
import { createDigester, parseDigest } from '../oci/digest.js';
import { OciError } from '../oci/errors.js';
import type { BlobStore, TempFile } from '../store/blob-store.js';

/** Bytes read per positional read when serving from a growing file (see READ_HIGH_WATER_MARK in blob-store.ts). */
const READ_CHUNK = 256 * 1024;

type FillState = 'filling' | 'committed' | 'failed';

/**
 * One upstream download of one digest into a temp file, readable by any number of clients while it grows.
 *
 * Readers never get the last byte (of the blob, or of their range) before the digest is verified, so a body that
 * fails verification is never delivered complete. They need not wait for the commit (fsync, rename): verified bytes are correct bytes, and
 * fsyncs on every layer's critical path would slow every cold pull. Clients come and go; the fill runs to completion
 * on its own signal.
 */
export class BlobFill extends EventEmitter {
  /** Bytes written to the temp file so far. */
  written = 0;
  state: FillState = 'filling';
  /** Size and digest checked: every byte may be delivered, even before the commit. */
  verified = false;
  error: unknown;
  /** The length the body must have (the opener's: a known size, else the upstream's Content-Length), when there is one. */
  expectedSize: number | undefined;
  /** A size known to be true before the body is verified (a stored manifest's descriptor); never the upstream's claim. */
  promisedSize: number | undefined;
  /** Resolves once the upstream answered with a body (or rejects with its error). */
  readonly ready: Promise<void>;
  /** Resolves once size and digest are verified; rejects when the fill fails before that. */
  readonly verification: Promise<void>;
  /** Resolves when the fill is committed; rejects when it fails. */
  readonly done: Promise<void>;

  private temp: TempFile | undefined;
  private readers = 0;
  private closed = false;
  private resolveReady!: () => void;
  private rejectReady!: (err: unknown) => void;
  private resolveVerification!: () => void;
  private rejectVerification!: (err: unknown) => void;
  private resolveDone!: () => void;
  private rejectDone!: (err: unknown) => void;

  constructor(
    readonly digest: string,
    private readonly store: BlobStore,
  ) {
    super();
    this.setMaxListeners(0);
    this.ready = new Promise((res, rej) => {
      this.resolveReady = res;
      this.rejectReady = rej;
    });
    this.done = new Promise((res, rej) => {
      this.resolveDone = res;
      this.rejectDone = rej;
    });
    this.verification = new Promise((res, rej) => {
      this.resolveVerification = res;
      this.rejectVerification = rej;
    });
    // Nobody may be waiting on these when a fill fails; avoid unhandled rejections.
    this.ready.catch(() => undefined);
    this.done.catch(() => undefined);
    this.verification.catch(() => undefined);
  }

  /**
   * Streams `body` into a temp file, verifying size and digest, then commits it and calls `onCommit`
   * (which writes the database row). `size` is the length the body must have; `promised` a size known to be true
   * that readers may announce before verification.
   */
  async run(
    open: () => Promise<{ body: Readable; size: number | undefined; promised?: number | undefined }>,
    onCommit: (size: number) => void,
  ): Promise<void> {
    try {
      const { body, size, promised } = await open();
      this.expectedSize = size;
      this.promisedSize = promised;
      try {
        this.temp = await this.store.createTemp();
      } catch (err) {
        body.destroy();
        throw err;
      }
      this.resolveReady();
      const algorithm = parseDigest(this.digest).algorithm;
      const hash = createDigester(algorithm);
      await pipeline(body, this.fileWriter(this.temp.handle, hash));
      if (size !== undefined && this.written !== size) {
        throw new OciError('SIZE_INVALID', 'upstream body size does not match Content-Length', { status: 502 });
      }
      const actual = `${algorithm}:${hash.digest('hex')}`;
      if (actual !== this.digest) {
        throw new OciError('DIGEST_INVALID', 'upstream content does not match its digest', { status: 502, detail: { digest: this.digest } });
      }
      this.verified = true;
      this.resolveVerification();
      this.emit('change');
      await this.store.commit(this.temp, this.digest);
      onCommit(this.written);
      this.state = 'committed';
      this.resolveDone();
    } catch (err) {
      this.state = 'failed';
      this.error = err;
      this.rejectReady(err);
      this.rejectVerification(err);
      this.rejectDone(err);
      if (this.temp) await this.store.discard(this.temp).catch(() => undefined);
    } finally {
      this.emit('change');
      await this.maybeClose();
    }
  }

  /** The size when known to be true: verified, or promised by a stored manifest; never the upstream's unverified claim. */
  get size(): number | undefined {
    return this.verified || this.state === 'committed' ? this.written : this.promisedSize;
  }

  /** A stream of bytes `[start, end]` (inclusive; end undefined = to the end) that follows the growing file. */
  createReader(start = 0, end?: number): Readable {
    // A late reader of a fill that already committed and let go of its temp file reads the stored file.
    if (this.closed && this.state === 'committed') return this.store.openRead(this.digest, start, end);
    const fill = this;
    let position = start;
    let reading = false;
    this.readers++;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      fill.readers--;
      fill.off('change', wake);
      void fill.maybeClose();
    };
    const stream = new Readable({
      highWaterMark: READ_CHUNK,
      read() {
        void pump();
      },
      destroy(err, cb) {
        release();
        cb(err);
      },
    });
    const wake = (): void => {
      // Only a reader whose consumer wants more reads on: a 'change' (one per upstream chunk) must not push past
      // backpressure, or a slow client ends up with the whole fill buffered in memory.
      if (!reading && stream.readableLength < stream.readableHighWaterMark) void pump();
    };
    this.on('change', wake);

    async function pump(): Promise<void> {
      if (reading || stream.destroyed) return;
      reading = true;
      try {
        for (;;) {
          // A commit that fails after verification does not spoil what readers get: the open file still holds it.
          if (fill.state === 'failed' && !fill.verified) {
            stream.destroy(fill.error instanceof Error ? fill.error : new Error('fill failed'));
            return;
          }
          const last = end ?? Number.POSITIVE_INFINITY;
          const complete = fill.verified || fill.state === 'committed';
          if (position > last || (complete && position >= fill.written)) {
            stream.push(null);
            release();
            return;
          }
          // Hold back the final byte of the blob, and of the range, until verified: an unverified body or range is
          // never delivered complete.
          const upTo = complete ? Math.min(fill.written, last + 1) : Math.min(fill.written - 1, last);
          if (position >= upTo || !fill.temp) return; // wait for 'change'
          const length = Math.min(READ_CHUNK, upTo - position);
          const buffer = Buffer.allocUnsafe(length);
          const { bytesRead } = await fill.temp.handle.read(buffer, 0, length, position);
          if (stream.destroyed) return;
          position += bytesRead;
          if (!stream.push(bytesRead === length ? buffer : buffer.subarray(0, bytesRead))) return;
        }
      } catch (err) {
        stream.destroy(err as Error);
      } finally {
        reading = false;
      }
    }
    return stream;
  }

  private fileWriter(handle: FileHandle, hash: ReturnType<typeof createDigester>): Writable {
    const fill = this;
    return new Writable({
      highWaterMark: READ_CHUNK,
      // Chunks that queue up while a write is in flight go to disk in one call.
      writev(chunks, callback) {
        const buffers = chunks.map((c) => c.chunk as Buffer);
        const total = buffers.reduce((n, b) => n + b.length, 0);
        if (fill.expectedSize !== undefined && fill.written + total > fill.expectedSize) {
          callback(new OciError('SIZE_INVALID', 'upstream body is longer than its Content-Length', { status: 502 }));
          return;
        }
        for (const b of buffers) hash.update(b);
        handle.writev(buffers, fill.written).then(
          ({ bytesWritten }) => {
            fill.written += bytesWritten;
            fill.emit('change');
            callback();
          },
          (err: Error) => callback(err),
        );
      },
      write(chunk: Buffer, _encoding, callback) {
        if (fill.expectedSize !== undefined && fill.written + chunk.length > fill.expectedSize) {
          callback(new OciError('SIZE_INVALID', 'upstream body is longer than its Content-Length', { status: 502 }));
          return;
        }
        hash.update(chunk);
        handle.write(chunk, 0, chunk.length, fill.written).then(
          ({ bytesWritten }) => {
            fill.written += bytesWritten;
            fill.emit('change');
            callback();
          },
          (err: Error) => callback(err),
        );
      },
    });
  }

  private async maybeClose(): Promise<void> {
    if (this.closed || this.state === 'filling' || this.readers > 0 || !this.temp) return;
    // The state is final and nobody reads: the handle can go (a failed fill's file is already unlinked).
    this.closed = true;
    await this.temp.handle.close().catch(() => undefined);
  }
}
