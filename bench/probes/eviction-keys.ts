/**
 * Probe (not part of `npm run bench`): what the row deletes of one eviction pass cost at 100k blobs with today's
 * digest-keyed schema, and what they would cost with integer keys. Builds a metadata database of `images` images of
 * a manifest and 10 blobs (~11 rows each) through the build's own Metadata and PullRecords (dist/; no files: only
 * SQLite is measured), gives it a least-recently-used order, then on copies deletes the rows of the 10 % least
 * recently used images the way `Evictor.remove` does (one transaction, `DELETE FROM tags/repository_digests/blobs` per
 * digest, cascades for the rest), timing the statements and the commit (with its WAL checkpoint) apart.
 *
 * The integer-key variant is the same data with `blobs(id INTEGER PRIMARY KEY, digest UNIQUE)` and every table that
 * names a stored blob (manifests, references by manifest, repository links, pull records) keyed by that id; the
 * references' child stays a digest (a child may not be stored yet), as do tags. Two access orders: random (warm hits
 * over the whole store, as in the store-growth scenario) and oldest-inserted-first (ids follow the eviction order).
 * Usage: `npm run build && tsc -p bench/tsconfig.json && node bench/out/bench/probes/eviction-keys.js [images] [runs]`.
 */
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { makeTempDir, removeTempDir } from '../../test/support/temp-dir.js';
import { summarize } from '../stats.js';
import { loadStoreModules, type StoreModules } from '../store-modules.js';

/** The gc command's page cache (src/commands.ts GC_CACHE_BYTES). */
const GC_CACHE_KIB = 256 * 1024;
const REGISTRY = 'probe.invalid:5000';

const sha = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Fills `file` with `images` images; last_access in `order`. */
function build(mods: StoreModules, file: string, images: number, order: 'random' | 'inserted'): void {
  const db = mods.openDatabase(file);
  const metadata = new mods.Metadata(db);
  const records = new mods.PullRecords(db);
  for (let start = 0; start < images; start += 500) {
    db.transaction(() => {
      for (let i = start; i < Math.min(images, start + 500); i++) {
        const repo = `probe/img-${i}`;
        const blobs = Array.from({ length: 10 }, () => ({ digest: sha(randomBytes(32)), size: 1024 + Math.floor(Math.random() * 3072) }));
        const manifest = JSON.stringify({ schemaVersion: 2, layers: blobs });
        const digest = sha(manifest);
        for (const b of blobs) {
          metadata.insertBlob(b.digest, b.size, null);
          metadata.linkRepository(REGISTRY, repo, b.digest);
        }
        metadata.insertManifest({ digest, size: manifest.length, mediaType: 'application/vnd.oci.image.manifest.v1+json' }, blobs.map((b) => ({ child: b.digest, kind: 'blob' as const })), { registry: REGISTRY, repository: repo });
        metadata.putTag(REGISTRY, repo, 'latest', digest);
        for (const d of [digest, ...blobs.map((b) => b.digest)]) records.recordSuccess(REGISTRY, repo, d, { kind: 'nodePodsAccessible' });
      }
    })();
  }
  // Each image's rows share one access time: random over the images, or the order they were inserted in.
  db.exec(`UPDATE blobs SET last_access = ${order === 'random' ? 'abs(random() % 1000000000)' : 'rowid'} WHERE digest IN (SELECT digest FROM manifests)`);
  db.exec(`UPDATE blobs SET last_access = (SELECT b.last_access FROM manifest_refs r JOIN blobs b ON b.digest = r.manifest WHERE r.child = blobs.digest)
           WHERE digest NOT IN (SELECT digest FROM manifests)`);
  db.pragma('wal_checkpoint(TRUNCATE)');
  db.close();
}

const INTEGER_SCHEMA = `
  CREATE TABLE blobs (id INTEGER PRIMARY KEY, digest TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, media_type TEXT,
    created_at INTEGER NOT NULL, last_access INTEGER NOT NULL, node_open INTEGER NOT NULL DEFAULT 0) STRICT;
  INSERT INTO blobs SELECT rowid, digest, size, media_type, created_at, last_access, node_open FROM s.blobs ORDER BY rowid;
  CREATE INDEX blobs_last_access ON blobs(last_access);
  CREATE TABLE manifests (blob INTEGER PRIMARY KEY REFERENCES blobs(id) ON DELETE CASCADE, media_type TEXT NOT NULL) STRICT;
  INSERT INTO manifests SELECT b.id, m.media_type FROM s.manifests m JOIN blobs b USING (digest) ORDER BY b.id;
  CREATE TABLE manifest_refs (manifest INTEGER NOT NULL REFERENCES manifests(blob) ON DELETE CASCADE, child TEXT NOT NULL,
    kind TEXT NOT NULL, PRIMARY KEY (manifest, child)) STRICT, WITHOUT ROWID;
  INSERT INTO manifest_refs SELECT b.id, r.child, r.kind FROM s.manifest_refs r JOIN blobs b ON b.digest = r.manifest ORDER BY b.id;
  CREATE INDEX manifest_refs_child ON manifest_refs(child);
  CREATE TABLE tags (registry TEXT NOT NULL, repository TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL,
    fetched_at INTEGER NOT NULL, PRIMARY KEY (registry, repository, tag)) STRICT, WITHOUT ROWID;
  INSERT INTO tags SELECT * FROM s.tags;
  CREATE INDEX tags_digest ON tags(digest);
  CREATE TABLE repository_digests (registry TEXT NOT NULL, repository TEXT NOT NULL,
    blob INTEGER NOT NULL REFERENCES blobs(id) ON DELETE CASCADE, PRIMARY KEY (registry, repository, blob)) STRICT, WITHOUT ROWID;
  INSERT INTO repository_digests SELECT r.registry, r.repository, b.id FROM s.repository_digests r JOIN blobs b USING (digest);
  CREATE INDEX repository_digests_blob ON repository_digests(blob);
  CREATE TABLE pull_records (registry TEXT NOT NULL, repository TEXT NOT NULL, blob INTEGER NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
    node_pods_accessible INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, last_verified INTEGER,
    PRIMARY KEY (registry, repository, blob)) STRICT, WITHOUT ROWID;
  INSERT INTO pull_records SELECT p.registry, p.repository, b.id, p.node_pods_accessible, p.created_at, p.last_verified
    FROM s.pull_records p JOIN blobs b USING (digest);
  CREATE INDEX pull_records_blob ON pull_records(blob);
  CREATE TABLE pull_record_credentials (registry TEXT NOT NULL, repository TEXT NOT NULL, blob INTEGER NOT NULL,
    credential_hash TEXT NOT NULL, verified_at INTEGER NOT NULL, PRIMARY KEY (registry, repository, blob, credential_hash),
    FOREIGN KEY (registry, repository, blob) REFERENCES pull_records(registry, repository, blob) ON DELETE CASCADE) STRICT, WITHOUT ROWID;
  CREATE TABLE preloaded (blob INTEGER NOT NULL REFERENCES blobs(id) ON DELETE CASCADE, image TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL, imported_at INTEGER NOT NULL, PRIMARY KEY (blob, image)) STRICT, WITHOUT ROWID;`;

/** The same rows keyed by integer ids, written to a new file. */
function integerCopy(from: string, to: string): void {
  const db = new Database(to);
  db.pragma('journal_mode = WAL');
  db.exec(`ATTACH '${from}' AS s`);
  db.transaction(() => db.exec(INTEGER_SCHEMA))();
  db.exec('DETACH s');
  db.exec('VACUUM');
  db.close();
}

/** Deletes the 10 % least recently used images' rows as Evictor.remove does; seconds of statements and of commit. */
function evict(file: string, integer: boolean): { statements: number; commit: number; rows: number } {
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  db.pragma('temp_store = MEMORY');
  db.pragma(`cache_size = -${GC_CACHE_KIB}`);
  const manifests = integer ? 'SELECT b.digest, b.id FROM manifests m JOIN blobs b ON b.id = m.blob' : 'SELECT b.digest, b.rowid AS id FROM manifests m JOIN blobs b USING (digest)';
  const count = (db.prepare('SELECT count(*) FROM manifests').pluck().get() as number) / 10;
  const roots = db.prepare(`${manifests} ORDER BY b.last_access LIMIT ?`).all(Math.floor(count)) as { digest: string; id: number }[];
  const children = integer
    ? db.prepare('SELECT c.digest, c.id FROM manifest_refs r JOIN blobs c ON c.digest = r.child WHERE r.manifest = ?')
    : db.prepare('SELECT c.digest, c.rowid AS id FROM manifest_refs r JOIN blobs c ON c.digest = r.child WHERE r.manifest = ?');
  const doomed = roots.flatMap((r) => [r, ...(children.all(integer ? r.id : r.digest) as { digest: string; id: number }[])]);
  const tags = db.prepare('DELETE FROM tags WHERE digest = ?');
  const links = integer ? db.prepare('DELETE FROM repository_digests WHERE blob = ?') : db.prepare('DELETE FROM repository_digests WHERE digest = ?');
  const blob = integer ? db.prepare('DELETE FROM blobs WHERE id = ?') : db.prepare('DELETE FROM blobs WHERE digest = ?');
  const t0 = performance.now();
  db.exec('BEGIN');
  for (const d of doomed) {
    tags.run(d.digest);
    links.run(integer ? d.id : d.digest);
    blob.run(integer ? d.id : d.digest);
  }
  const t1 = performance.now();
  db.exec('COMMIT');
  const t2 = performance.now();
  db.close();
  return { statements: (t1 - t0) / 1000, commit: (t2 - t1) / 1000, rows: doomed.length };
}

async function main(images: number, runs: number): Promise<void> {
  const mods = await loadStoreModules();
  const dir = await makeTempDir('rc-probe-eviction-keys-');
  try {
    console.log(`| ${images} images (${images * 11} blob rows), access order | schema | statements, s | commit, s | together, s | rows deleted | database pages |`);
    console.log('|---|---|---:|---:|---:|---:|---:|');
    for (const order of ['random', 'inserted'] as const) {
      const digestKeyed = join(dir, `digest-${order}.db`);
      build(mods, digestKeyed, images, order);
      const integerKeyed = join(dir, `integer-${order}.db`);
      integerCopy(digestKeyed, integerKeyed);
      for (const [schema, file] of [['digests (today)', digestKeyed], ['integer ids', integerKeyed]] as const) {
        const results: ReturnType<typeof evict>[] = [];
        for (let run = 0; run < runs; run++) {
          const copy = join(dir, 'copy.db');
          for (const suffix of ['', '-wal', '-shm']) rmSync(copy + suffix, { force: true });
          copyFileSync(file, copy);
          results.push(evict(copy, schema === 'integer ids'));
        }
        const pages = new Database(file, { readonly: true }).pragma('page_count', { simple: true }) as number;
        const med = (f: (r: (typeof results)[number]) => number): string => summarize(results.map(f)).median.toFixed(2);
        console.log(`| ${order} | ${schema} | ${med((r) => r.statements)} | ${med((r) => r.commit)} | ${med((r) => r.statements + r.commit)} | ${results[0]?.rows ?? 0} | ${pages} |`);
      }
    }
  } finally {
    await removeTempDir(dir);
  }
}

await main(Number(process.argv[2] ?? 9_090), Number(process.argv[3] ?? 3));
