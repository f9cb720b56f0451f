import { EventEmitter } from 'node:events';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseDigest } from '../oci/digest.js';
import { ExternalMemoryGuard } from '../lifecycle/external-memory.js';
import { OciError } from '../oci/errors.js';
import type { BlobStore, TempFile } from '../store/blob-store.js';
import { HashingWriter } from '../store/hashing-writer.js';
import { RecyclingReadable, type Chunk, type ReadBufferBudget } from '../store/read-stream.js';

/** Bytes per positional read when serving from a growing file (the size blob-store.ts reads stored blobs at when crowded). */
const READ_CHUNK = 256 * 1024;

/**
 * Recent bytes of a fill kept in memory for its readers: ONE window per fill, shared by all of them, so memory stays
 * flat whatever the blob size or the number of clients. A reader that falls behind it continues from the file.
 */
const WINDOW_BYTES = 4 * 1024 * 1024;
/** Received bytes not yet on the file before the upstream body waits for the disk (within the window). */
const PENDING_BYTES = 2 * 1024 * 1024;

/**
 * Growth of external memory that asks for a full collection while fills receive bytes (see ExternalMemoryGuard). V8's
 * own line is 64 MiB; at 40 MiB a herd of 64 clients on a cold 256 MiB blob needed 0-1 extra collections (~50 ms each)
 * and peaked at 158-172 MB, against 178-211 MB without (same build otherwise, interleaved, same server CPU).
 */
const GARBAGE_LIMIT = 40 * 1024 * 1024;
/** Received bytes between two checks of the guard (each reads process.memoryUsage(): ~12 µs). */
const CHECK_EVERY = 1024 * 1024;
/** One guard for every fill: the garbage is the process's. */
const processGuard = new ExternalMemoryGuard({ limitBytes: GARBAGE_LIMIT });

type FillState = 'filling' | 'committed' | 'failed';

/** A received chunk and its offset in the blob. */
interface WindowChunk {
  offset: number;
  bytes: Buffer;
}

/**
 * One upstream download of one digest into a temp file, readable by any number of clients while it grows.
 *
 * Readers never get the last byte (of the blob, or of their range) before the digest is verified, so a body that
 * fails verification is never delivered complete. They need not wait for the commit (fsync, rename): verified bytes are correct bytes, and
 * fsyncs on every layer's critical path would slow every cold pull. Clients come and go; the fill runs to completion
 * on its own signal.
 */
export class BlobFill extends EventEmitter {
  /** Bytes received and hashed so far: in the window, on the temp file, or both. */
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
  /** Bytes of the temp file written so far; everything before the window is there. */
  private onDisk = 0;
  /** The latest chunks received, in order and contiguous up to `written`: readers near the head read them here. */
  private window: WindowChunk[] = [];
  private windowBytes = 0;
  private readers = 0;
  private closed = false;
  private resolveReady!: () => void;
  private rejectReady!: (err: unknown) => void;
  private resolveVerification!: () => void;
  private rejectVerification!: (err: unknown) => void;
  private resolveDone!: () => void;
  private rejectDone!: (err: unknown) => void;

  /** `memory`: the guard this fill's received bytes are checked against (tests pass their own). */
  constructor(
    readonly digest: string,
    private readonly store: BlobStore,
    private readonly memory: ExternalMemoryGuard = processGuard,
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
    // The temp file opens while the upstream request is in flight: its open is off the time to first byte.
    const opening = this.store.createTemp().then((temp) => (this.temp = temp));
    opening.catch(() => undefined);
    try {
      const algorithm = parseDigest(this.digest).algorithm;
      const { body, size, promised } = await open();
      this.expectedSize = size;
      this.promisedSize = promised;
      let temp: TempFile;
      try {
        temp = await opening;
      } catch (err) {
        body.destroy();
        throw err;
      }
      this.resolveReady();
      const writer = new HashingWriter(temp.handle, algorithm, {
        pendingLimit: PENDING_BYTES,
        ...(size === undefined
          ? {}
          : { limit: { size, error: () => new OciError('SIZE_INVALID', 'upstream body is longer than its Content-Length', { status: 502 }) } }),
        onChunk: (chunk, offset) => {
          // Readers get the chunk from memory now; the file catches up behind them.
          this.window.push({ offset, bytes: chunk });
          this.windowBytes += chunk.length;
          if (Math.floor(offset / CHECK_EVERY) !== Math.floor((offset + chunk.length) / CHECK_EVERY)) this.memory.check();
          this.written = offset + chunk.length;
          this.trimWindow();
          this.emit('change');
        },
        onWritten: () => {
          this.onDisk = writer.onDisk;
          this.trimWindow();
        },
        // Verified bytes may all go out while the file catches up: readers still in the window have them in memory,
        // and the window lets go of nothing the file does not hold.
        onDigest: (digest) => {
          if (size !== undefined && this.written !== size) {
            throw new OciError('SIZE_INVALID', 'upstream body size does not match Content-Length', { status: 502 });
          }
          if (digest !== this.digest) {
            throw new OciError('DIGEST_INVALID', 'upstream content does not match its digest', { status: 502, detail: { digest: this.digest } });
          }
          this.verified = true;
          this.resolveVerification();
          this.emit('change');
        },
      });
      await pipeline(body, writer);
      await this.store.commit(temp, this.digest);
      onCommit(this.written);
      this.state = 'committed';
      this.resolveDone();
    } catch (err) {
      // The temp file goes before the failure is told: whoever learns of it (a waiting client, the back-off) finds the
      // fill over, as when the file was opened only after the upstream answered.
      await opening.catch(() => undefined);
      if (this.temp) await this.store.discard(this.temp).catch(() => undefined);
      this.state = 'failed';
      this.error = err;
      if (!this.verified) this.dropWindow();
      await this.maybeClose();
      this.rejectReady(err);
      this.rejectVerification(err);
      this.rejectDone(err);
    } finally {
      this.emit('change');
      await this.maybeClose();
    }
  }

  /** The read-ahead budget its readers share with every other fill's (readers behind the window read the file). */
  get readAhead(): ReadBufferBudget {
    return this.store.fillReadAhead;
  }

  /** Bytes of this fill held in memory for its readers (the shared window), for tests and metrics. */
  get bufferedBytes(): number {
    return this.windowBytes;
  }

  /** The size when known to be true: verified, or promised by a stored manifest; never the upstream's unverified claim. */
  get size(): number | undefined {
    return this.verified || this.state === 'committed' ? this.written : this.promisedSize;
  }

  /** A stream of bytes `[start, end]` (inclusive; end undefined = to the end) that follows the growing file. */
  createReader(start = 0, end?: number): Readable {
    // A late reader of a fill that already committed and let go of its temp file reads the stored file.
    if (this.closed && this.state === 'committed') return this.store.openRead(this.digest, start, end);
    this.readers++;
    return new FillReader(this, start, end);
  }

  /**
   * The next bytes for a reader at `position` of range `[.., last]`: a view of the window, or a read of the file into
   * `reuse` (or a new buffer); null at the end; undefined when there is nothing yet (wait for 'change'). Throws the
   * fill's error when it failed before verification.
   */
  async nextChunk(position: number, last: number, reuse: Buffer | undefined): Promise<Chunk | null | undefined> {
    // A commit that fails after verification does not spoil what readers get: the open file and the window hold it.
    if (this.state === 'failed' && !this.verified) throw this.error instanceof Error ? this.error : new Error('fill failed');
    const complete = this.verified || this.state === 'committed';
    if (position > last || (complete && position >= this.written)) return null;
    // Hold back the final byte of the blob, and of the range, until verified: an unverified body or range is never
    // delivered complete.
    const upTo = complete ? Math.min(this.written, last + 1) : Math.min(this.written - 1, last);
    if (position >= upTo) return undefined;
    const recent = this.fromWindow(position, upTo);
    if (recent) return { bytes: recent };
    // Behind the window: everything before it is on the file.
    const length = Math.min(READ_CHUNK, upTo - position, this.onDisk - position);
    if (!this.temp || length <= 0) return undefined;
    const buffer = reuse && reuse.length >= length ? reuse : Buffer.allocUnsafe(length);
    const { bytesRead } = await this.temp.handle.read(buffer, 0, length, position);
    return { buffer, bytes: buffer.subarray(0, bytesRead) };
  }

  /** A reader is gone (ended or destroyed): the temp file may close once the fill is over. */
  readerDone(): void {
    this.readers--;
    void this.maybeClose();
  }

  /** Bytes `[position, upTo)` from the start of the window chunk holding `position`, or undefined when it is behind. */
  private fromWindow(position: number, upTo: number): Buffer | undefined {
    const window = this.window;
    let lo = 0;
    let hi = window.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const chunk = window[mid] as WindowChunk;
      if (position < chunk.offset) hi = mid - 1;
      else if (position >= chunk.offset + chunk.bytes.length) lo = mid + 1;
      else return chunk.bytes.subarray(position - chunk.offset, Math.min(chunk.bytes.length, upTo - chunk.offset));
    }
    return undefined;
  }

  /** Lets go of the oldest chunks beyond the window's size, once the file holds them. */
  private trimWindow(): void {
    for (;;) {
      const first = this.window[0];
      if (!first || this.windowBytes - first.bytes.length < WINDOW_BYTES || first.offset + first.bytes.length > this.onDisk) return;
      this.window.shift();
      this.windowBytes -= first.bytes.length;
    }
  }

  private dropWindow(): void {
    this.window = [];
    this.windowBytes = 0;
  }

  private async maybeClose(): Promise<void> {
    if (this.closed || this.state === 'filling' || this.readers > 0 || !this.temp) return;
    // The state is final and nobody reads: the handle can go (a failed fill's file is already unlinked).
    this.closed = true;
    this.dropWindow();
    await this.temp.handle.close().catch(() => undefined);
  }
}

/**
 * One client's bytes of a fill: from the shared window while it keeps up, else from the temp file into reused buffers
 * (a herd of readers behind the window would otherwise allocate a buffer per read each). It reads only when its
 * consumer wants more, so a slow client never makes the process buffer the blob.
 */
class FillReader extends RecyclingReadable {
  private released = false;
  private wake: (() => void) | undefined;

  constructor(
    private readonly fill: BlobFill,
    private position: number,
    end: number | undefined,
    private readonly last = end ?? Number.POSITIVE_INFINITY,
  ) {
    super(READ_CHUNK, fill.readAhead);
  }

  protected async readChunk(reuse: Buffer | undefined): Promise<Chunk | null> {
    for (;;) {
      if (this.destroyed) return null;
      const chunk = await this.fill.nextChunk(this.position, this.last, reuse);
      if (chunk === null) {
        this.release();
        return null;
      }
      if (chunk === undefined) {
        await this.changed();
        continue;
      }
      // The file holds every byte before onDisk: a short read there is a broken store, not a reason to spin.
      if (chunk.bytes.length === 0) throw new Error('temp file read returned no bytes');
      this.position += chunk.bytes.length;
      return chunk;
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.release();
    this.wake?.();
    callback(error);
  }

  /** Resolves on the fill's next 'change' (a chunk, the verification, the end) or when this reader is destroyed. */
  private changed(): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        this.fill.off('change', done);
        this.wake = undefined;
        resolve();
      };
      this.wake = done;
      this.fill.on('change', done);
    });
  }

  private release(): void {
    if (this.released) return;
    this.released = true;
    this.fill.readerDone();
  }
}
