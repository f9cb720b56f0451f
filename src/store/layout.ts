import { join } from 'node:path';
import { parseDigest } from '../oci/digest.js';

/*
 * On-disk layout of the store root:
 *
 *   <storage>/
 *     blobs/
 *       sha256/ab/<64 hex>     complete, digest-verified content (layers, configs and manifests alike)
 *       sha512/ab/<128 hex>
 *     tmp/<random>             downloads in progress; same filesystem so commit is a rename; wiped at start
 *     registry-cache.db        SQLite metadata (WAL mode: also -wal and -shm files)
 *     registry-cache.lock      pid of the process that may recover and evict (the server, or gc/verify --repair/preload)
 *     clean-shutdown           left by that process after a clean close; while present, start-up skips reconciliation
 *
 * Every directory is 0700 and every file 0600: the store holds private images and the node secret.
 *
 * A file under blobs/ exists before its database row, so a row always means a complete file.
 */

/** Paths inside one store root. */
export interface StoreLayout {
  root: string;
  blobsDir: string;
  tmpDir: string;
  databaseFile: string;
}

/** The layout of a store rooted at `root`. */
export function storeLayout(root: string): StoreLayout {
  return { root, blobsDir: join(root, 'blobs'), tmpDir: join(root, 'tmp'), databaseFile: join(root, 'registry-cache.db') };
}

/** Where a digest's content lives; the digest is re-validated so no input can name a path outside the store. */
export function blobPath(layout: StoreLayout, digest: string): string {
  const d = parseDigest(digest);
  return join(layout.blobsDir, d.algorithm, d.hex.slice(0, 2), d.hex);
}
