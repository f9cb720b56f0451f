import type { Readable } from 'node:stream';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createDigester, parseDigest, type DigestAlgorithm } from '../oci/digest.js';
import { OciError } from '../oci/errors.js';
import type { BlobStore } from '../store/blob-store.js';

/**
 * Streams content into the store: hashed while written, committed atomically under its digest. With
 * `expected`, a mismatch discards it; without, the computed digest names it.
 */
export async function importBlob(store: BlobStore, body: Readable, expected?: string): Promise<{ digest: string; size: number }> {
  const algorithm: DigestAlgorithm = expected ? parseDigest(expected).algorithm : 'sha256';
  const hash = createDigester(algorithm);
  const temp = await store.createTemp();
  let size = 0;
  try {
    await pipeline(
      body,
      new Writable({
        write(chunk: Buffer, _enc, cb) {
          hash.update(chunk);
          temp.handle.write(chunk, 0, chunk.length, size).then(({ bytesWritten }) => {
            size += bytesWritten;
            cb();
          }, cb);
        },
      }),
    );
    const digest = `${algorithm}:${hash.digest('hex')}`;
    if (expected && digest !== expected) throw new OciError('DIGEST_INVALID', `content named ${expected} hashes to ${digest}`);
    await store.commit(temp, digest);
    return { digest, size };
  } catch (err) {
    await store.discard(temp);
    throw err;
  } finally {
    await temp.handle.close();
  }
}
