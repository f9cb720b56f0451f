import { randomBytes } from 'node:crypto';
import { close as closeFd, closeSync, open as openFd, openSync, read as readFd, readSync } from 'node:fs';
import { chmod, mkdir, open, readdir, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { digestOf, parseDigest } from '../oci/digest.js';
import { blobPath, storeLayout, type StoreLayout } from './layout.js';
import { BUFFERS_READING_AHEAD, FileRangeStream, ReadBufferBudget } from './read-stream.js';

/**
 * A stored file that is missing, or not the size or the digest its row says: the row is wrong and the file is never
 * served. Its holder drops both and fetches the content again.
 */
export class StoredFileUnusable extends Error {
  override readonly name = 'StoredFileUnusable';
}

/** A temp file being filled; committed by rename into the content-addressed tree. */
export interface TempFile {
  path: string;
  handle: FileHandle;
}

/**
 * Read size for serving stored blobs, chosen by measurement: 16 curls at once, each on its own stored 64 MiB blob,
 * 10 interleaved runs per size at load ~10: 512 KiB took 0.66 s of server CPU per GiB (918 MB/s aggregate), 256 KiB
 * 0.86 s (695 MB/s), 1 MiB 0.95 s (650 MB/s). Half the thread-pool round trips of 256 KiB; 1 MiB no longer fits the
 * core's cache between the file read and the socket write.
 */
const READ_SIZE = 512 * 1024;
/** Stored files up to this size are read synchronously by `readWhole` (a few pages, like a SQLite lookup). */
const SMALL_READ_BYTES = 16 * 1024;
/**
 * Buffer memory the reads at READ_SIZE may hold together (a piped read holds at most 3 buffers: one being written,
 * one being read, one spare). Reads opened beyond it use READ_SIZE_CROWDED, so 64 clients cost what they did at
 * 256 KiB plus this budget. Before buffer reuse, 1 MiB buffers with 64 slow clients on a 256 MiB blob drove RSS to
 * 2.4 GB (179 MB with 256 KiB).
 */
const READ_BUFFER_BUDGET = 32 * 1024 * 1024;
/** Read size of reads opened while READ_BUFFER_BUDGET is taken. */
const READ_SIZE_CROWDED = 256 * 1024;

/**
 * Read-ahead memory of the readers of blobs still being filled (BlobFill's readers of the temp file), for all fills
 * together: readers beyond it hold one 256 KiB buffer instead of three. Such a reader reads the file only when it fell
 * behind the fill's window, so its client is slower than the upstream and reading ahead does not make it faster; a
 * herd of 64 hashing clients on one cold blob held 64 × 768 KiB (50 MB of a 182 MB peak RSS) before. Five readers
 * catching up with the fill (joined late) still read ahead.
 */
const FILL_READ_AHEAD_BUDGET = 4 * 1024 * 1024;

/** Store directories and files are the cache user's alone. */
export const DIR_MODE = 0o700;
/** Mode of every file the store writes. */
export const FILE_MODE = 0o600;

/** Content-addressed files on disk. Knows nothing of the database. */
export class BlobStore {
  readonly layout: StoreLayout;
  /** Read-ahead budget shared by the readers of every fill in progress (see FILL_READ_AHEAD_BUDGET). */
  readonly fillReadAhead = new ReadBufferBudget(FILL_READ_AHEAD_BUDGET);
  /** Open reads at READ_SIZE, until they close. */
  private readonly wideReads = new ReadBufferBudget(READ_BUFFER_BUDGET);

  constructor(root: string) {
    this.layout = storeLayout(root);
  }

  /**
   * Creates the directories, private to the cache's user (0700): the store holds private images and the node secret.
   * A store created by an older version (0755) is tightened; the files inside it are then out of reach too.
   */
  async ensureDirectories(): Promise<void> {
    for (const dir of [this.layout.root, this.layout.blobsDir, this.layout.tmpDir]) {
      await mkdir(dir, { recursive: true, mode: DIR_MODE });
      await chmod(dir, DIR_MODE).catch((err: NodeJS.ErrnoException) => {
        // Someone else's directory (a read-only `records` run by another user) is left as it is.
        if (err.code !== 'EPERM') throw err;
      });
    }
  }

  /** Removes downloads left over from a previous run; only the store's lock holder may (they may be someone's). */
  async clearTemp(): Promise<{ removedTempFiles: number }> {
    const leftovers = await readdir(this.layout.tmpDir);
    await Promise.all(leftovers.map((name) => rm(join(this.layout.tmpDir, name), { force: true, recursive: true })));
    return { removedTempFiles: leftovers.length };
  }

  /** Path of a digest's file (which may not exist). */
  pathFor(digest: string): string {
    return blobPath(this.layout, digest);
  }

  /** Size of the stored file, or undefined when absent. */
  async size(digest: string): Promise<number | undefined> {
    try {
      return (await stat(this.pathFor(digest))).size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /**
   * Streams `[start, end]` (inclusive) of a stored file; piped, it reuses its read buffers. Reads of READ_SIZE while
   * READ_BUFFER_BUDGET allows, of READ_SIZE_CROWDED beyond.
   */
  openRead(digest: string, start?: number, end?: number): FileRangeStream {
    const bytes = BUFFERS_READING_AHEAD * READ_SIZE;
    const wide = this.wideReads.take(bytes);
    const stream = new FileRangeStream(this.pathFor(digest), wide ? READ_SIZE : READ_SIZE_CROWDED, { start, end });
    if (wide) stream.once('close', () => this.wideReads.give(bytes));
    return stream;
  }

  /** Reads a small stored file (a manifest) whole. */
  async readSmall(digest: string): Promise<Buffer> {
    return readFile(this.pathFor(digest));
  }

  /**
   * Reads a stored file whose size its row gives, whole, and checks it against its digest (once per manifest per
   * process: the memory of manifest bytes then holds verified bytes). Up to SMALL_READ_BYTES (nearly every manifest)
   * with synchronous syscalls (open, a read of the size plus one byte, the read that finds the end, close), as SQLite
   * reads its pages: each thread-pool round trip costs more than the read itself (first reads of warm manifests at
   * 100k rows, 3,000 hits: readFile 2,900 hits/s, open and reads on the pool 3,250, synchronous 3,700). Larger files:
   * an open and reads on the pool, the close not waited for. A file that is missing, not `size` bytes or does not
   * hash to its digest is rejected with StoredFileUnusable, never served.
   */
  readWhole(digest: string, size: number): Promise<Buffer> {
    if (size <= SMALL_READ_BYTES) {
      try {
        return Promise.resolve(this.readWholeSync(digest, size));
      } catch (err) {
        return Promise.reject(err as Error);
      }
    }
    const path = this.pathFor(digest);
    const bytes = Buffer.allocUnsafeSlow(size + 1);
    return new Promise((resolve, reject) => {
      openFd(path, 'r', (openErr, fd) => {
        if (openErr) return reject(unusableIfMissing(digest, openErr));
        const readFrom = (filled: number): void =>
          readFd(fd, bytes, filled, bytes.length - filled, filled, (readErr, read) => {
            if (!readErr && read > 0 && filled + read < bytes.length) return readFrom(filled + read);
            closeFd(fd, () => {});
            if (readErr) return reject(readErr);
            try {
              resolve(wholeFile(digest, bytes, filled + read));
            } catch (err) {
              reject(err as Error);
            }
          });
        readFrom(0);
      });
    });
  }

  /** Whether the stored file of `digest` is whole now: `size` bytes that hash to it (a synchronous read: rare paths only). */
  isWholeSync(digest: string, size: number): boolean {
    try {
      this.readWholeSync(digest, size);
      return true;
    } catch {
      return false;
    }
  }

  /** `readWhole` with synchronous syscalls: open, reads until the end or one byte past `size`, close; then the checks. */
  private readWholeSync(digest: string, size: number): Buffer {
    // One byte more than the row says, so a file that grew is seen too; never a slice of the shared pool, which a
    // remembered manifest would keep alive.
    const bytes = Buffer.allocUnsafeSlow(size + 1);
    let fd: number;
    try {
      fd = openSync(this.pathFor(digest), 'r');
    } catch (err) {
      throw unusableIfMissing(digest, err);
    }
    let filled = 0;
    try {
      for (let read = -1; read !== 0 && filled < bytes.length; filled += read) read = readSync(fd, bytes, filled, bytes.length - filled, filled);
    } finally {
      closeSync(fd);
    }
    return wholeFile(digest, bytes, filled);
  }

  /** Opens a new temp file for reading and writing. */
  async createTemp(): Promise<TempFile> {
    const path = join(this.layout.tmpDir, `${Date.now().toString(36)}-${randomBytes(8).toString('hex')}`);
    const handle = await open(path, 'w+', FILE_MODE);
    return { path, handle };
  }

  /** Makes a verified temp file durable and visible under its digest: fsync, rename, fsync the directory. */
  async commit(temp: TempFile, digest: string): Promise<void> {
    await temp.handle.sync();
    const target = this.pathFor(digest);
    const dir = dirname(target);
    await mkdir(dir, { recursive: true, mode: DIR_MODE });
    await rename(temp.path, target);
    await syncDirectory(dir);
  }

  /** Writes a small verified buffer (a manifest) under its digest, atomically. */
  async writeSmall(digest: string, bytes: Uint8Array): Promise<void> {
    const temp = await this.createTemp();
    try {
      await temp.handle.write(bytes, 0, bytes.length, 0);
      await this.commit(temp, digest);
    } catch (err) {
      await rm(temp.path, { force: true });
      throw err;
    } finally {
      await temp.handle.close();
    }
  }

  /** Removes a temp file; used when a fill fails. */
  async discard(temp: TempFile): Promise<void> {
    await rm(temp.path, { force: true });
  }
}

/** Makes a directory's entries (a rename, a new or removed file) durable. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** The file read into `bytes` (one byte over the row's size), if the `read` bytes are the row's size and its digest. */
function wholeFile(digest: string, bytes: Buffer, read: number): Buffer {
  const size = bytes.length - 1;
  if (read !== size) throw new StoredFileUnusable(`the stored file of ${digest} is ${read > size ? 'longer than' : `${read} bytes, not`} the ${size} bytes its row says`);
  const file = bytes.subarray(0, size);
  if (digestOf(file, parseDigest(digest).algorithm) !== digest) throw new StoredFileUnusable(`the stored file of ${digest} does not hash to its digest`);
  return file;
}

/** A missing file as StoredFileUnusable (its row says it is stored); any other error as it is. */
function unusableIfMissing(digest: string, err: unknown): Error {
  return (err as NodeJS.ErrnoException).code === 'ENOENT' ? new StoredFileUnusable(`the stored file of ${digest} is missing`) : (err as Error);
}
