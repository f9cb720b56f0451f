import { chmodSync, closeSync, openSync } from 'node:fs';
import Database from 'better-sqlite3';
import { MIGRATIONS } from './migrations.js';

/** A better-sqlite3 connection. */
export type Db = Database.Database;

/** SQLite's name for a private in-memory database (contract tests). */
const IN_MEMORY = ':memory:';

/** Opens the metadata database with WAL and the pragmas a small, write-light cache wants; migrates it. */
export function openDatabase(file: string): Db {
  if (file === IN_MEMORY) {
    // No file to protect, and an in-memory database has no WAL: the same pragmas otherwise.
    const db = new Database(IN_MEMORY);
    db.pragma('foreign_keys = ON');
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
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  migrate(db);
  return db;
}

function migrate(db: Db): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  for (let i = current; i < MIGRATIONS.length; i++) {
    const migration = MIGRATIONS[i];
    if (!migration) break;
    db.transaction(() => {
      db.exec(migration.sql);
      db.pragma(`user_version = ${i + 1}`);
    })();
  }
}
