import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseDigest, type DigestAlgorithm } from '../oci/digest.js';
import { OciError } from '../oci/errors.js';
import type { BlobStore } from '../store/blob-store.js';
import { HashingWriter } from '../store/hashing-writer.js';

/**
 * Streams content into the store: hashed while written, committed atomically under its digest. With
 * `expected`, a mismatch discards it; without, the computed digest names it.
 */
export async function importBlob(store: BlobStore, body: Readable, expected?: string): Promise<{ digest: string; size: number }> {
  const algorithm: DigestAlgorithm = expected ? parseDigest(expected).algorithm : 'sha256';
  const temp = await store.createTemp();
  try {
    const writer = new HashingWriter(temp.handle, algorithm);
    await pipeline(body, writer);
    const digest = writer.digest();
    if (expected && digest !== expected) throw new OciError('DIGEST_INVALID', `content named ${expected} hashes to ${digest}`);
    await store.commit(temp, digest);
    return { digest, size: writer.onDisk };
  } catch (err) {
    await store.discard(temp);
    throw err;
  } finally {
    await temp.handle.close();
  }
}
