import { chmodSync, closeSync, openSync } from 'node:fs';
import Database from 'better-sqlite3';
import { MIGRATIONS } from './migrations.js';

/** A better-sqlite3 connection. */
export type Db = Database.Database;

/**
 * A stored blob's id by its digest, as a scalar subquery taking the digest parameter (NULL when it is not stored):
 * the rows that hang off a blob name it by this id (migration 006), while callers name content by digest.
 */
export const BLOB_ID = '(SELECT id FROM blobs WHERE digest = ?)';

/** SQLite's name for a private in-memory database (contract tests). */
const IN_MEMORY = ':memory:';

/** How a connection is opened beyond the defaults every connection gets. */
export interface DatabaseOptions {
  /**
   * SQLite page cache of this connection, in bytes (better-sqlite3's default is 16 MB). A pass that writes rows all over a
   * large database (`gc` deleting 10 % of 100k blobs touches most index pages) re-reads and re-writes evicted pages
   * without a larger one; the server keeps the default (its hot queries touch few pages).
   */
  cacheBytes?: number;
}

/** Opens the metadata database with WAL and the pragmas a small, write-light cache wants; migrates it. */
export function openDatabase(file: string, options: DatabaseOptions = {}): Db {
  if (file === IN_MEMORY) {
    // No file to protect, and an in-memory database has no WAL: the same pragmas otherwise.
    const db = new Database(IN_MEMORY);
    setPragmas(db, options);
    migrate(db);
    return db;
  }
  // SQLite creates the -wal and -shm files with the database file's mode: create it 0600 first (and tighten an old one).
  closeSync(openSync(file, 'a', 0o600));
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    try {
      chmodSync(f, 0o600);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'EPERM') throw err;
    }
  }
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  // NORMAL is durable across process crashes in WAL mode; a power cut may lose the last rows, never files.
  db.pragma('synchronous = NORMAL');
  db.pragma('busy_timeout = 5000');
  setPragmas(db, options);
  migrate(db);
  return db;
}

function setPragmas(db: Db, options: DatabaseOptions): void {
  db.pragma('foreign_keys = ON');
  // A statement with cascades or triggers (deleting a blob row) journals every page it changes so it can be undone
  // alone; in a file that was a write() per page (eviction at 126k rows: 324k pwrite calls, ~1 of its 2 CPU s).
  db.pragma('temp_store = MEMORY');
  // Negative: a size in KiB rather than pages.
  if (options.cacheBytes !== undefined) db.pragma(`cache_size = -${Math.ceil(options.cacheBytes / 1024)}`);
}

function migrate(db: Db): void {
  const version = db.pragma('user_version', { simple: true }) as number;
  // A store written by a newer build: its queries would fail one by one, or worse, read columns that changed meaning.
  if (version > MIGRATIONS.length) {
    throw new Error(`the metadata database has schema version ${version}, newer than this build's ${MIGRATIONS.length}: run a registry-cache at least as new as the one that wrote it`);
  }
  if (version === MIGRATIONS.length) return;
  // The version is read again under the write lock (IMMEDIATE): a command started beside a starting server must not
  // run a migration the other process has just run.
  db.transaction(() => {
    const current = db.pragma('user_version', { simple: true }) as number;
    for (let i = current; i < MIGRATIONS.length; i++) {
      const migration = MIGRATIONS[i];
      if (!migration) break;
      db.exec(migration.sql);
      db.pragma(`user_version = ${i + 1}`);
    }
  }).immediate();
}
