import { createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import type { Metadata } from '../db/queries.js';
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

/**
 * Re-hashes every stored blob and manifest. With `repair`, a bad one is removed, rows and pull records first
 * (in one transaction), then the file, so the next request fetches it again.
 */
export async function verifyStore(deps: { store: BlobStore; metadata: Metadata }, repair: boolean, onProgress?: (done: number, total: number) => void): Promise<IntegrityReport> {
  const digests = deps.metadata.allBlobDigests();
  const report: IntegrityReport = { checked: 0, bytes: 0, problems: [], repaired: 0 };
  for (const digest of digests) {
    const row = deps.metadata.getBlob(digest);
    if (!row) continue;
    let problem: IntegrityProblem | undefined;
    try {
      const { digest: actual, size } = await hashFile(deps.store.pathFor(digest), parseDigest(digest).algorithm);
      report.bytes += size;
      if (size !== row.size) problem = { digest, problem: 'size', detail: `${size} bytes on disk, ${row.size} recorded` };
      else if (actual !== digest) problem = { digest, problem: 'digest', detail: `content hashes to ${actual}` };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      problem = { digest, problem: 'missing', detail: 'file is missing' };
    }
    report.checked++;
    onProgress?.(report.checked, digests.length);
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
