import { access } from 'node:fs/promises';
import type { Logger } from 'pino';
import { BlobCache } from './cache/blobs.js';
import { ManifestCache } from './cache/manifests.js';
import type { Config } from './config/load.js';
import { openDatabase } from './db/database.js';
import { Metadata } from './db/queries.js';
import { BlobStore } from './store/blob-store.js';
import { UpstreamClient } from './upstream/client.js';
import type { AppDeps } from './app.js';
import type { Dispatcher } from 'undici';

/** The long-lived parts of a running cache, and how to shut them down. */
export interface Services extends AppDeps {
  store: BlobStore;
  metadata: Metadata;
  close(): Promise<void>;
}

/** Opens the store and database (cleaning up after a crash) and wires the caches. */
export async function createServices(config: Config, log: Logger, options: { dispatcher?: Dispatcher } = {}): Promise<Services> {
  const store = new BlobStore(config.storage);
  const { removedTempFiles } = await store.init();
  const metadata = new Metadata(openDatabase(store.layout.databaseFile));
  const dropped = await reconcile(store, metadata);
  if (removedTempFiles > 0 || dropped > 0) log.info({ removedTempFiles, droppedRows: dropped }, 'store recovered from an unclean stop');
  const upstream = new UpstreamClient({
    connectTimeoutMs: config.upstreamConnectTimeoutMs,
    headersTimeoutMs: config.upstreamHeadersTimeoutMs,
    bodyTimeoutMs: config.upstreamBodyTimeoutMs,
    log,
    ...(options.dispatcher ? { dispatcher: options.dispatcher } : {}),
  });
  const blobs = new BlobCache({ store, metadata, upstream, log, fillTimeoutMs: config.fillTimeoutMs });
  const manifests = new ManifestCache({ store, metadata, upstream, log, tagTtlMs: config.tagTtlMs });
  return {
    config,
    log,
    store,
    metadata,
    upstream,
    blobs,
    manifests,
    ready: async () => {
      metadata.db.prepare('SELECT 1').get();
      await access(store.layout.tmpDir);
      return true;
    },
    close: async () => {
      await upstream.close();
      metadata.close();
    },
  };
}

/** Drops rows whose file is gone (a row must always mean a complete file). Returns how many. */
async function reconcile(store: BlobStore, metadata: Metadata): Promise<number> {
  let dropped = 0;
  for (const digest of metadata.allBlobDigests()) {
    if ((await store.size(digest)) === undefined) {
      metadata.deleteBlob(digest);
      dropped++;
    }
  }
  return dropped;
}
