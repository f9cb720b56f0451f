/**
 * Probe (not part of `npm run bench`): what the row deletes of one eviction pass cost at 100k blobs with the schema
 * keyed by integer blob ids (migration 006, today) and with the digest-keyed schema before it (migrations 001-005).
 * Builds a metadata database of `images` images of a manifest and 10 blobs (~11 rows each) through the build's own
 * Metadata and PullRecords (dist/; no files: only SQLite is measured), gives it a least-recently-used order, copies
 * the same rows into the digest-keyed schema, then on copies deletes the rows of the 10 % least recently used images
 * the way `Evictor.remove` does (one transaction, `DELETE FROM tags/repository_digests/blobs` per digest, cascades
 * for the rest), timing the statements and the commit (with its WAL checkpoint) apart.
 *
 * Two access orders: random (warm hits over the whole store, as in the store-growth scenario) and
 * oldest-inserted-first (ids follow the eviction order).
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
  db.exec(`UPDATE blobs SET last_access = ${order === 'random' ? 'abs(random() % 1000000000)' : 'id'} WHERE id IN (SELECT blob FROM manifests)`);
  db.exec(`UPDATE blobs SET last_access = (SELECT b.last_access FROM manifest_refs r JOIN blobs b ON b.id = r.manifest WHERE r.child = blobs.digest)
           WHERE id NOT IN (SELECT blob FROM manifests)`);
  db.pragma('wal_checkpoint(TRUNCATE)');
  // Compacted, as the digest-keyed copy is (VACUUM): the two schemas are compared on equally packed files.
  db.exec('VACUUM');
  db.close();
}

/** The tables of migrations 001-005 (every blob named by its digest), filled with the rows of the attached store `s`. */
const DIGEST_SCHEMA = `
  CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, media_type TEXT, created_at INTEGER NOT NULL,
    last_access INTEGER NOT NULL, node_open INTEGER NOT NULL DEFAULT 0) STRICT;
  INSERT INTO blobs SELECT digest, size, media_type, created_at, last_access, node_open FROM s.blobs ORDER BY id;
  CREATE INDEX blobs_last_access ON blobs(last_access);
  CREATE TABLE manifests (digest TEXT PRIMARY KEY REFERENCES blobs(digest) ON DELETE CASCADE, media_type TEXT NOT NULL) STRICT;
  INSERT INTO manifests SELECT b.digest, m.media_type FROM s.manifests m JOIN s.blobs b ON b.id = m.blob ORDER BY b.id;
  CREATE TABLE manifest_refs (manifest TEXT NOT NULL REFERENCES manifests(digest) ON DELETE CASCADE, child TEXT NOT NULL,
    kind TEXT NOT NULL, PRIMARY KEY (manifest, child)) STRICT, WITHOUT ROWID;
  INSERT INTO manifest_refs SELECT b.digest, r.child, r.kind FROM s.manifest_refs r JOIN s.blobs b ON b.id = r.manifest;
  CREATE INDEX manifest_refs_child ON manifest_refs(child);
  CREATE TABLE tags (registry TEXT NOT NULL, repository TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL,
    fetched_at INTEGER NOT NULL, PRIMARY KEY (registry, repository, tag)) STRICT, WITHOUT ROWID;
  INSERT INTO tags SELECT * FROM s.tags;
  CREATE INDEX tags_digest ON tags(digest);
  CREATE TABLE repository_digests (registry TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (registry, repository, digest)) STRICT, WITHOUT ROWID;
  INSERT INTO repository_digests SELECT * FROM s.repository_digests;
  CREATE INDEX repository_digests_digest ON repository_digests(digest);
  CREATE TABLE pull_records (registry TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL REFERENCES blobs(digest) ON DELETE CASCADE,
    node_pods_accessible INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, last_verified INTEGER,
    PRIMARY KEY (registry, repository, digest)) STRICT, WITHOUT ROWID;
  INSERT INTO pull_records SELECT p.registry, p.repository, b.digest, p.node_pods_accessible, p.created_at, p.last_verified
    FROM s.pull_records p JOIN s.blobs b ON b.id = p.blob;
  CREATE INDEX pull_records_digest ON pull_records(digest);
  CREATE TABLE pull_record_credentials (registry TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL,
    credential_hash TEXT NOT NULL, verified_at INTEGER NOT NULL, PRIMARY KEY (registry, repository, digest, credential_hash),
    FOREIGN KEY (registry, repository, digest) REFERENCES pull_records(registry, repository, digest) ON DELETE CASCADE) STRICT, WITHOUT ROWID;
  CREATE TABLE preloaded (digest TEXT NOT NULL REFERENCES blobs(digest) ON DELETE CASCADE, image TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL, imported_at INTEGER NOT NULL, PRIMARY KEY (digest, image)) STRICT, WITHOUT ROWID;`;

/** The same rows keyed by digests, written to a new file. */
function digestCopy(from: string, to: string): void {
  const db = new Database(to);
  db.pragma('journal_mode = WAL');
  db.exec(`ATTACH '${from}' AS s`);
  db.transaction(() => db.exec(DIGEST_SCHEMA))();
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
  const links = db.prepare('DELETE FROM repository_digests WHERE digest = ?');
  // By digest on both, as Metadata.deleteContent does.
  const blob = db.prepare('DELETE FROM blobs WHERE digest = ?');
  const t0 = performance.now();
  db.exec('BEGIN');
  for (const d of doomed) {
    tags.run(d.digest);
    links.run(d.digest);
    blob.run(d.digest);
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
      const integerKeyed = join(dir, `integer-${order}.db`);
      build(mods, integerKeyed, images, order);
      const digestKeyed = join(dir, `digest-${order}.db`);
      digestCopy(integerKeyed, digestKeyed);
      for (const [schema, file] of [['digests (005)', digestKeyed], ['integer ids (006, today)', integerKeyed]] as const) {
        const results: ReturnType<typeof evict>[] = [];
        for (let run = 0; run < runs; run++) {
          const copy = join(dir, 'copy.db');
          for (const suffix of ['', '-wal', '-shm']) rmSync(copy + suffix, { force: true });
          copyFileSync(file, copy);
          results.push(evict(copy, schema !== 'digests (005)'));
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
