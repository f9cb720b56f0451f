import type { Logger } from 'pino';
import type { Config } from '../config/load.js';
import type { Metadata } from '../db/content-index.js';
import type { PullIntentLog } from '../db/intents.js';
import { openMetadata } from '../db/open.js';
import type { PullRecords } from '../db/pull-records.js';
import { BlobStore } from '../store/blob-store.js';
import { lockStore, markCleanShutdown, takeCleanShutdownMark, type StoreLock } from '../store/lock.js';
import { recoverStore } from '../store/recovery.js';

// Apart from the server's wiring (services.ts) so that the maintenance commands (`records`, `verify`, `gc`, `preload`)
// load the store, the database and recovery without the HTTP server, upstream client and metrics.

/** The store, its metadata and pull records, opened for a server or a one-shot command. */
export interface OpenStore {
  store: BlobStore;
  metadata: Metadata;
  records: PullRecords;
  intents: PullIntentLog;
  /** Held when this process may recover and evict (nobody else serves the store). */
  lock: StoreLock | undefined;
  /** Closes the database and releases the lock. */
  close(): Promise<void>;
}

/**
 * Opens the store and database. Crash recovery (temp files, rows without files, files without rows, leftover intents)
 * runs only under the store's lock: next to a live server the same steps would destroy its downloads in flight.
 * `exclusive` demands the lock (the server, `gc`, `verify --repair`); otherwise a held lock means "open as is".
 * `readOnly` (`records`, `verify`, `gc --dry-run`) never recovers and takes the lock only when also exclusive.
 * After a clean shutdown (the mark its lock holder leaves) the per-file reconciliation is skipped.
 * `cacheBytes`: the database connection's page cache (see `DatabaseOptions`).
 */
export async function openStore(config: Config, log: Logger, options: { exclusive?: boolean; readOnly?: boolean; cacheBytes?: number } = {}): Promise<OpenStore> {
  const store = new BlobStore(config.storage);
  await store.ensureDirectories();
  let lock: StoreLock | undefined;
  if (options.exclusive || !options.readOnly) {
    try {
      lock = await lockStore(config.storage);
    } catch (err) {
      if (options.exclusive) throw err;
    }
  }
  // The lock holder is the only process that deletes rows while it runs.
  const { index: metadata, records, intents } = openMetadata(store.layout.databaseFile, { cacheBytes: options.cacheBytes, soleDeleter: lock !== undefined });
  // Set once disk and rows are known to agree; only then may a clean close say so for the next start.
  let consistent = false;
  const close = async (): Promise<void> => {
    metadata.close();
    if (lock && consistent) await markCleanShutdown(config.storage);
    await lock?.release();
  };
  if (!lock || options.readOnly) return { store, metadata, records, intents, lock, close };
  const clean = await takeCleanShutdownMark(config.storage);
  const { removedTempFiles, droppedRows, strayFiles, recoveredIntents, usageDriftBytes } = await recoverStore(store, metadata, intents, clean);
  consistent = true;
  if (removedTempFiles + droppedRows + strayFiles + recoveredIntents > 0 || usageDriftBytes !== 0) {
    log.warn(
      { removedTempFiles, droppedRows, strayFiles, recoveredIntents, usageDriftBytes },
      'store reconciled after an unclean stop (pull intents left by a crash became records without credentials)',
    );
  }
  return { store, metadata, records, intents, lock, close };
}
