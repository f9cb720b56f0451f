import { closeSync, createReadStream, fstatSync, openSync, readSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import type { Metadata } from '../db/content-index.js';
import { createDigester, parseDigest } from '../oci/digest.js';
import type { BlobStore } from '../store/blob-store.js';

/** One stored file that does not hash to its name (or is missing or has the wrong size). */
export interface IntegrityProblem {
  digest: string;
  problem: 'missing' | 'size' | 'digest';
  detail: string;
}

/** Result of re-hashing the store. */
export interface IntegrityReport {
  checked: number;
  bytes: number;
  problems: IntegrityProblem[];
  repaired: number;
}

/** Hashes a stored file by streaming it (memory stays flat whatever its size). */
export async function hashFile(path: string, algorithm: 'sha256' | 'sha512'): Promise<{ digest: string; size: number }> {
  const hash = createDigester(algorithm);
  let size = 0;
  await pipeline(
    createReadStream(path, { highWaterMark: 1024 * 1024 }),
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        size += chunk.length;
        cb();
      },
    }),
  );
  return { digest: `${algorithm}:${hash.digest('hex')}`, size };
}

/** Files up to this size are read whole with one read; larger ones are streamed. */
const SINGLE_READ_MAX = 256 * 1024;
/** Small files hashed between two turns of the event loop (at most BATCH_BYTES of them). */
const BATCH_FILES = 256;
const BATCH_BYTES = 8 * 1024 * 1024;

/**
 * Hashes a small file with one synchronous read into a buffer of the recorded size (plus one byte, to see a file
 * that grew). Synchronous on purpose: for files of a few KiB the thread-pool round trips of async reads cost 3–5×
 * the read itself, and callers batch these calls between turns of the event loop.
 */
function hashSmallFile(path: string, algorithm: 'sha256' | 'sha512', expectedSize: number): { digest: string; size: number } {
  const fd = openSync(path, 'r');
  try {
    let buffer = Buffer.allocUnsafe(expectedSize + 1);
    let size = readSync(fd, buffer, 0, buffer.length, 0);
    if (size > expectedSize) {
      // Larger than recorded: read it all, so the report gives its real size.
      buffer = Buffer.allocUnsafe(fstatSync(fd).size);
      size = readSync(fd, buffer, 0, buffer.length, 0);
    }
    const hash = createDigester(algorithm).update(buffer.subarray(0, size));
    return { digest: `${algorithm}:${hash.digest('hex')}`, size };
  } finally {
    closeSync(fd);
  }
}

/**
 * Re-hashes every stored blob and manifest. With `repair`, a bad one is removed, rows and pull records first
 * (in one transaction), then the file, so the next request fetches it again. Small files are hashed in batches
 * with one read each (the store is mostly small configs, manifests and layers: a stream per file made `verify`
 * run at 8 MB/s), large ones streamed.
 */
export async function verifyStore(deps: { store: BlobStore; metadata: Metadata }, repair: boolean, onProgress?: (done: number, total: number) => void): Promise<IntegrityReport> {
  const digests = deps.metadata.allBlobDigests();
  const report: IntegrityReport = { checked: 0, bytes: 0, problems: [], repaired: 0 };
  let batchFiles = 0;
  let batchBytes = 0;
  for (const digest of digests) {
    const row = deps.metadata.getBlob(digest);
    if (!row) continue;
    let problem: IntegrityProblem | undefined;
    try {
      const path = deps.store.pathFor(digest);
      const algorithm = parseDigest(digest).algorithm;
      const { digest: actual, size } = row.size <= SINGLE_READ_MAX ? hashSmallFile(path, algorithm, row.size) : await hashFile(path, algorithm);
      report.bytes += size;
      batchBytes += size;
      if (size !== row.size) problem = { digest, problem: 'size', detail: `${size} bytes on disk, ${row.size} recorded` };
      else if (actual !== digest) problem = { digest, problem: 'digest', detail: `content hashes to ${actual}` };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      problem = { digest, problem: 'missing', detail: 'file is missing' };
    }
    report.checked++;
    onProgress?.(report.checked, digests.length);
    if (++batchFiles >= BATCH_FILES || batchBytes >= BATCH_BYTES) {
      batchFiles = 0;
      batchBytes = 0;
      await nextTurn();
    }
    if (!problem) continue;
    report.problems.push(problem);
    if (repair) {
      deps.metadata.deleteBlob(digest);
      await rm(deps.store.pathFor(digest), { force: true });
      report.repaired++;
    }
  }
  return report;
}
