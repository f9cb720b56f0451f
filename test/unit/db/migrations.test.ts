import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { openDatabase } from '../../../src/db/database.js';
import { openMetadata, type MetadataDatabase } from '../../../src/db/open.js';
import { MIGRATIONS } from '../../../src/db/migrations.js';
import { makeTempDir, removeTempDir } from '../../support/temp-dir.js';
import { digest, OCI_MANIFEST } from './memory-database.js';

const INDEX = 'application/vnd.oci.image.index.v1+json';

/** A database file at schema 005 (digest-keyed), holding every kind of row a store of that version could hold. */
function version5Store(file: string): void {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('foreign_keys = ON');
  for (const [i, m] of MIGRATIONS.slice(0, 5).entries()) {
    db.exec(m.sql);
    db.pragma(`user_version = ${i + 1}`);
  }
  const blob = db.prepare('INSERT INTO blobs (digest, size, media_type, created_at, last_access, node_open) VALUES (?, ?, ?, 1, ?, ?)');
  // An index (10) over an image (11) of two layers (1, 2); a layer another image (12, evicted long ago) also held (3);
  // 4: a blob with no manifest, pulled by a tenant and preloaded by name.
  blob.run(digest(1), 100, null, 50, 1);
  blob.run(digest(2), 200, null, 50, 0);
  blob.run(digest(3), 300, null, 40, 0);
  blob.run(digest(4), 400, null, 30, 0);
  blob.run(digest(10), 10, INDEX, 60, 0);
  blob.run(digest(11), 11, OCI_MANIFEST, 60, 0);
  db.prepare('INSERT INTO manifests (digest, media_type) VALUES (?, ?), (?, ?)').run(digest(10), INDEX, digest(11), OCI_MANIFEST);
  const ref = db.prepare('INSERT INTO manifest_refs (manifest, child, kind) VALUES (?, ?, ?)');
  ref.run(digest(10), digest(11), 'manifest');
  ref.run(digest(10), digest(99), 'manifest'); // a platform not stored
  ref.run(digest(11), digest(1), 'blob');
  ref.run(digest(11), digest(2), 'blob');
  db.prepare("INSERT INTO tags VALUES ('r.io', 'team/app', 'v1', ?, 7)").run(digest(10));
  db.prepare("INSERT INTO tags VALUES ('r.io', 'team/gone', 'v1', ?, 7)").run(digest(12));
  const link = db.prepare("INSERT INTO repository_digests VALUES ('r.io', ?, ?)");
  for (const d of [1, 2, 10, 11]) link.run('team/app', digest(d));
  link.run('team/gone', digest(3));
  const record = db.prepare('INSERT INTO pull_records VALUES (?, ?, ?, ?, 5, ?)');
  record.run('r.io', 'team/app', digest(10), 0, 6);
  record.run('r.io', 'team/app', digest(11), 1, null);
  record.run('r.io', 'team/private', digest(4), 0, 8);
  const hash = db.prepare('INSERT INTO pull_record_credentials VALUES (?, ?, ?, ?, 9)');
  hash.run('r.io', 'team/app', digest(10), 'a'.repeat(64));
  hash.run('r.io', 'team/app', digest(10), 'b'.repeat(64));
  hash.run('r.io', 'team/private', digest(4), 'c'.repeat(64));
  db.prepare("INSERT INTO preloaded VALUES (?, 'r.io/team/pre', 'preload', 3), (?, '', 'first-enable', 3)").run(digest(4), digest(3));
  db.close();
}

describe('migration 006: rows keyed by blob id (db/migrations.ts)', () => {
  const dirs: string[] = [];
  const opened: MetadataDatabase[] = [];
  afterEach(async () => {
    for (const db of opened.splice(0)) db.index.close();
    for (const dir of dirs.splice(0)) await removeTempDir(dir);
  });

  it('carries every row of a digest-keyed store over, with its foreign keys and the running total', async () => {
    const dir = await makeTempDir('rc-migrate-6-');
    dirs.push(dir);
    const file = join(dir, 'registry-cache.db');
    version5Store(file);
    const { index, records } = openMetadata(file);
    opened.push({ index, records } as MetadataDatabase);
    const db = (index as unknown as { db: Database.Database }).db;

    expect(db.pragma('user_version', { simple: true })).toBe(MIGRATIONS.length);
    expect(db.pragma('foreign_key_check')).toEqual([]);
    expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
    // Foreign keys name the renamed tables, not the build-time names or the dropped digest-keyed ones.
    const targets = (table: string): string[] => [...new Set((db.pragma(`foreign_key_list(${table})`) as { table: string }[]).map((r) => r.table))];
    expect(targets('manifests')).toEqual(['blobs']);
    expect(targets('manifest_refs')).toEqual(['manifests']);
    expect(targets('pull_records')).toEqual(['blobs']);
    expect(targets('pull_record_credentials')).toEqual(['pull_records']);
    expect(targets('preloaded')).toEqual(['blobs']);
    expect(db.prepare("SELECT name FROM sqlite_master WHERE name LIKE '%_v6'").all()).toEqual([]);
    // The id sequence follows the rename and starts after the highest id carried over.
    expect(db.prepare('SELECT name, seq FROM sqlite_sequence').all()).toEqual([{ name: 'blobs', seq: 6 }]);
    const triggers = db.prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name").pluck().all();
    expect(triggers).toEqual(['blobs_usage_delete', 'blobs_usage_insert', 'blobs_usage_resize']);

    // What the code reads of the store, through its own queries.
    expect(index.storedBytes()).toBe(1_021);
    expect(index.getBlob(digest(1))).toEqual({ digest: digest(1), size: 100, mediaType: null, nodeOpen: true });
    expect(index.getManifest(digest(10))).toEqual({ digest: digest(10), size: 10, mediaType: INDEX });
    expect(index.manifestRefs(digest(11)).sort((a, b) => a.child.localeCompare(b.child))).toEqual([
      { child: digest(1), kind: 'blob' },
      { child: digest(2), kind: 'blob' },
    ]);
    expect(index.parentsInRepository('r.io', 'team/app', digest(11))).toEqual([digest(10)]);
    expect(index.getTag('r.io', 'team/app', 'v1')).toEqual({ digest: digest(10), fetchedAt: 7 });
    expect(index.isLinked('r.io', 'team/gone', digest(3))).toBe(true);
    const app = records.get('r.io', 'team/app', digest(10));
    expect(app).toMatchObject({ nodePodsAccessible: false, createdAt: 5, lastVerified: 6, preloaded: false });
    expect(app?.credentialHashes.sort()).toEqual(['a'.repeat(64), 'b'.repeat(64)]);
    expect(records.access('r.io', 'team/app', digest(10), 'b'.repeat(64))).toEqual({ preloaded: false, nodePodsAccessible: false, credential: true });
    expect(records.access('r.io', 'team/app', digest(10), 'c'.repeat(64))?.credential).toBe(false);
    expect(records.access('r.io', 'team/private', digest(4), 'c'.repeat(64))?.credential).toBe(true);
    expect(records.get('r.io', 'team/app', digest(11))?.nodePodsAccessible).toBe(true);
    expect(records.importedAs('r.io', 'team/pre', digest(4))).toBe(true);
    // Preloaded before verification: counts through the repository it was fetched through, as before.
    expect(records.isPreloaded('r.io', 'team/gone', digest(3))).toBe(true);
    expect(records.isPreloaded('r.io', 'team/app', digest(3))).toBe(false);
    const images = index.recentImages(5);
    expect(images.map((i) => i.digest)).toEqual([digest(10)]);
    expect(images[0]).toMatchObject({ storedBytes: 321, complete: false });

    // Deleting content still takes everything that hangs off it, and the total follows.
    index.deleteContent([digest(10), digest(4)]);
    expect(records.get('r.io', 'team/app', digest(10))).toBeUndefined();
    expect(records.access('r.io', 'team/private', digest(4), 'c'.repeat(64))).toBeUndefined();
    expect(db.prepare('SELECT count(*) FROM pull_record_credentials').pluck().get()).toBe(0);
    expect(db.prepare('SELECT count(*) FROM preloaded').pluck().get()).toBe(1);
    expect(index.getManifest(digest(10))).toBeUndefined();
    expect(db.prepare('SELECT count(*) FROM manifest_refs').pluck().get()).toBe(2);
    expect(index.storedBytes()).toBe(611);
    index.insertBlob(digest(5), 5, null);
    expect(index.storedBytes()).toBe(616);
  });
  it('runs no migration another process ran between its version check and its write lock', async () => {
    const dir = await makeTempDir('rc-migrate-race-');
    dirs.push(dir);
    const file = join(dir, 'registry-cache.db');
    version5Store(file);
    openDatabase(file).close();
    // This connection's first look at the version sees 005, as if the other process had not committed yet.
    const pragma = Database.prototype.pragma;
    let stale = true;
    const spy = vi.spyOn(Database.prototype, 'pragma').mockImplementation(function (this: Database.Database, source: string, options?: Database.PragmaOptions) {
      if (stale && source === 'user_version') {
        stale = false;
        return 5;
      }
      return pragma.call(this, source, options);
    });
    try {
      const db = openDatabase(file);
      expect(stale).toBe(false);
      expect(db.pragma('user_version', { simple: true })).toBe(MIGRATIONS.length);
      expect(db.prepare('SELECT count(*) FROM pull_record_credentials').pluck().get()).toBe(3);
      db.close();
    } finally {
      spy.mockRestore();
    }
  });
  it('never gives a deleted blob row id to new content, migrated or new store alike', async () => {
    const dir = await makeTempDir('rc-migrate-ids-');
    dirs.push(dir);
    const migrated = join(dir, 'migrated.db');
    version5Store(migrated);
    for (const file of [migrated, join(dir, 'new.db')]) {
      const { index } = openMetadata(file);
      opened.push({ index } as MetadataDatabase);
      index.insertBlob(digest(20), 1, null);
      const idOf = (d: string): number | undefined => index.blobPage(0, 100).find((r) => r.digest === d)?.rowid;
      const last = idOf(digest(20)) ?? -1;
      index.deleteContent([digest(20)]);
      index.insertBlob(digest(21), 1, null);
      expect(idOf(digest(21)), file).toBeGreaterThan(last);
    }
  });

  it('refuses a store written by a newer build, naming both schema versions', async () => {
    const dir = await makeTempDir('rc-migrate-newer-');
    dirs.push(dir);
    const file = join(dir, 'registry-cache.db');
    openDatabase(file).close();
    const db = new Database(file);
    db.pragma(`user_version = ${MIGRATIONS.length + 1}`);
    db.close();
    expect(() => openDatabase(file)).toThrow(`schema version ${MIGRATIONS.length + 1}, newer than this build's ${MIGRATIONS.length}`);
  });
});
