import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { currentCacheCli } from './systems.js';

// The build under test's own store modules (dist/, not src/), for scenarios and probes that write a store directly.

/** The parts of the build under test's own modules that write a store (dist/, not src/). */
export interface StoreModules {
  openDatabase(file: string): SqliteDb;
  Metadata: new (db: SqliteDb) => {
    insertBlob(digest: string, size: number, mediaType: string | null): void;
    insertManifest(m: { digest: string; size: number; mediaType: string }, refs: Array<{ child: string; kind: 'blob' | 'manifest' }>, via: { registry: string; repository: string }): void;
    linkRepository(registry: string, repository: string, digest: string): void;
    putTag(registry: string, repository: string, tag: string, digest: string): void;
    close(): void;
  };
  PullRecords: new (db: SqliteDb) => { recordSuccess(registry: string, repository: string, digest: string, puller: { kind: 'nodePodsAccessible' }): void };
  BlobStore: new (root: string) => { ensureDirectories(): Promise<void>; pathFor(digest: string): string };
}

/** The little of better-sqlite3's Database the scenarios and probes use. */
export interface SqliteDb {
  transaction(fn: () => void): () => void;
  prepare(sql: string): { get(): unknown; all(): unknown[] };
  exec(sql: string): unknown;
  pragma(sql: string): unknown;
  close(): void;
}

/** Loads them from the dist/ of the CLI under test. */
export async function loadStoreModules(): Promise<StoreModules> {
  const dist = dirname(currentCacheCli());
  const load = async (rel: string): Promise<Record<string, unknown>> => (await import(pathToFileURL(join(dist, rel)).href)) as Record<string, unknown>;
  // A build from before db/ was split per concern keeps these in db/queries.js and policy/records.js.
  const loadFirst = async (...rels: string[]): Promise<Record<string, unknown>> => {
    for (const rel of rels.slice(0, -1)) if (existsSync(join(dist, rel))) return load(rel);
    return load(rels[rels.length - 1] ?? '');
  };
  const [database, queries, records, blobStore] = await Promise.all([
    load('db/database.js'),
    loadFirst('db/content-index.js', 'db/queries.js'),
    loadFirst('db/pull-records.js', 'policy/records.js'),
    load('store/blob-store.js'),
  ]);
  return {
    openDatabase: database.openDatabase as StoreModules['openDatabase'],
    Metadata: queries.Metadata as StoreModules['Metadata'],
    PullRecords: records.PullRecords as StoreModules['PullRecords'],
    BlobStore: blobStore.BlobStore as StoreModules['BlobStore'],
  };
}
