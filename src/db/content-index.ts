import type { Statement } from 'better-sqlite3';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { LRUCache } from 'lru-cache';
import { BLOB_ID, type Db } from './database.js';

/** A stored blob's metadata. */
export interface BlobRow {
  digest: string;
  size: number;
  mediaType: string | null;
  /** Fetched without a tenant credential: other nodes may be offered it. */
  nodeOpen: boolean;
}

/** A stored manifest's metadata. */
export interface ManifestRow {
  digest: string;
  size: number;
  mediaType: string;
}

/** One row of a page of blobs, in table (rowid) order. */
export interface BlobPageRow {
  rowid: number;
  digest: string;
  last_access: number;
  size: number;
}

/** One blob as eviction's list reads it, as an array (no object per row): rowid, digest, last access, size. */
export type BlobTuple = [rowid: number, digest: string, lastAccess: number, size: number];

/** A tag's last known digest. */
export interface TagRow {
  digest: string;
  fetchedAt: number;
}

/** A stored image as the status page lists it: its top-level manifest, what names it, its stored size and last use. */
export interface ImageUsage {
  digest: string;
  /** Tags on it (`tag` set), else the repositories it came through. */
  names: { registry: string; repository: string; tag: string | undefined }[];
  /** Bytes of the manifest and everything it references that is stored. */
  storedBytes: number;
  /** Whether everything it references is stored. */
  complete: boolean;
  lastAccess: number;
}

import type { ManifestRef } from '../oci/manifest.js';
export type { ManifestRef };

/** How often batched last-access updates are written; access times need not be exact. */
const TOUCH_FLUSH_MS = 5_000;
/**
 * Access times written per transaction by the periodic flush, which yields between them: the distinct digests
 * touched in 5 s grow with the store (3,000 random warm hits at 126k rows: one 60-90 ms stretch of CPU).
 */
const TOUCH_FLUSH_ROWS = 250;
/** Repository links remembered as written; one forgotten costs one INSERT that does nothing. */
const LINK_MEMO_ENTRIES = 65_536;
/** Stored manifests' rows remembered by the store's sole deleter (~200 bytes each); one forgotten costs one SELECT. */
const MANIFEST_ROW_ENTRIES = 16_384;

/** How a connection's queries may be answered. */
export interface MetadataOptions {
  /**
   * This process holds the store's lock, so no other process deletes rows while it runs (`gc` and `verify --repair`
   * refuse next to it; `preload` and the read-only commands only add or read): a stored manifest's row, once read,
   * stays until this connection deletes it, and is answered from memory until then.
   */
  soleDeleter?: boolean;
}

/** A keyset page of blobs by rowid: pages follow the table's own order, not one index lookup per row. */
const BLOB_PAGE = 'SELECT id AS rowid, digest, last_access, size FROM blobs WHERE id > ? ORDER BY id LIMIT ?';

/** Typed, prepared queries over the metadata database. Short transactions only: better-sqlite3 blocks. */
export class Metadata {
  private readonly stmt: {
    getBlob: Statement<[string], { digest: string; size: number; media_type: string | null; node_open: number }>;
    insertBlob: Statement<[string, number, string | null, number, number, number]>;
    getManifest: Statement<[string], [size: number, mediaType: string]>;
    blobId: Statement<[string], number>;
    insertManifest: Statement<[number, string]>;
    insertRef: Statement<[number, string, string]>;
    getTag: Statement<[string, string, string], { digest: string; fetched_at: number }>;
    putTag: Statement<[string, string, string, string, number]>;
    link: Statement<[string, string, string]>;
    touch: Statement<[number, string]>;
    refs: Statement<[string], { child: string; kind: 'manifest' | 'blob' }>;
    parents: Statement<[string, string, string], string>;
    isLinked: Statement<[string, string, string], number>;
    usage: Statement<[], number>;
    blobPage: Statement<[number, number], BlobPageRow>;
    blobTuples: Statement<[number, number], BlobTuple>;
    refPage: Statement<[number, string, number], [manifest: number, child: string]>;
    manifestPage: Statement<[number, number], number>;
    deleteBlob: Statement<[string]>;
    deleteLinks: Statement<[string]>;
    deleteTags: Statement<[string]>;
    recentTops: Statement<[number, number], { digest: string; last_access: number }>;
    imageSize: Statement<[string], { size: number; last_access: number; stored: number; total: number }>;
    tagsOf: Statement<[string], { registry: string; repository: string; tag: string }>;
    reposOf: Statement<[string], { registry: string; repository: string }>;
    tagNames: Statement<[string], string>;
    repositoryNames: Statement<[string], string>;
  };
  /** Digest → time of its latest access; the flush writes these times, not its own. */
  private pendingTouches = new Map<string, number>();
  private touchTimer: NodeJS.Timeout | undefined;
  /**
   * (registry, repository, digest) links this connection wrote or found stored: a warm hit skips the SELECT it would
   * otherwise make on every request. Only `deleteContent` deletes links, and it clears this, so a remembered link is a
   * stored row.
   */
  private readonly linked = new LRUCache<string, true>({ max: LINK_MEMO_ENTRIES });
  /**
   * Stored manifests' rows this connection read, when it is the store's sole deleter: every delete below forgets the
   * digests it deleted, so a remembered row is a stored row (a warm hit by digest then makes no SQLite call, and its
   * read transaction's file locks were a third of the SELECT's cost).
   */
  private readonly manifestRows: LRUCache<string, ManifestRow> | undefined;

  constructor(
    private readonly db: Db,
    options: MetadataOptions = {},
  ) {
    this.manifestRows = options.soleDeleter ? new LRUCache<string, ManifestRow>({ max: MANIFEST_ROW_ENTRIES }) : undefined;
    this.stmt = {
      getBlob: db.prepare('SELECT digest, size, media_type, node_open FROM blobs WHERE digest = ?'),
      insertBlob: db.prepare(
        // A blob stored by a tenant's pull becomes offerable once fetched again without one, never the reverse.
        'INSERT INTO blobs (digest, size, media_type, created_at, last_access, node_open) VALUES (?, ?, ?, ?, ?, ?) ' +
          'ON CONFLICT(digest) DO UPDATE SET node_open = 1 WHERE excluded.node_open = 1 AND blobs.node_open = 0',
      ),
      // Raw (an array, not an object with named keys) and without the digest it is looked up by: every manifest hit
      // asks for this row (answered from memory by the store's sole deleter once read).
      getManifest: db.prepare<[string], [size: number, mediaType: string]>('SELECT b.size, m.media_type FROM blobs b JOIN manifests m ON m.blob = b.id WHERE b.digest = ?').raw(),
      blobId: db.prepare<[string], number>('SELECT id FROM blobs WHERE digest = ?').pluck(),
      insertManifest: db.prepare('INSERT INTO manifests (blob, media_type) VALUES (?, ?) ON CONFLICT(blob) DO NOTHING'),
      insertRef: db.prepare('INSERT INTO manifest_refs (manifest, child, kind) VALUES (?, ?, ?) ON CONFLICT DO NOTHING'),
      getTag: db.prepare('SELECT digest, fetched_at FROM tags WHERE registry = ? AND repository = ? AND tag = ?'),
      putTag: db.prepare(
        `INSERT INTO tags (registry, repository, tag, digest, fetched_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (registry, repository, tag) DO UPDATE SET digest = excluded.digest, fetched_at = excluded.fetched_at`,
      ),
      link: db.prepare('INSERT INTO repository_digests (registry, repository, digest) VALUES (?, ?, ?) ON CONFLICT DO NOTHING'),
      touch: db.prepare('UPDATE blobs SET last_access = MAX(last_access, ?) WHERE digest = ?'),
      refs: db.prepare(`SELECT child, kind FROM manifest_refs WHERE manifest = ${BLOB_ID}`),
      parents: db
        .prepare<[string, string, string], string>(
          // CROSS JOIN keeps the child's references the outer loop: a repository may link thousands of digests.
          `SELECT b.digest FROM manifest_refs r CROSS JOIN blobs b ON b.id = r.manifest CROSS JOIN repository_digests d ON d.digest = b.digest
           WHERE r.child = ? AND d.registry = ? AND d.repository = ? ORDER BY b.digest`,
        )
        .pluck(),
      isLinked: db
        .prepare<[string, string, string], number>('SELECT 1 FROM repository_digests WHERE registry = ? AND repository = ? AND digest = ?')
        .pluck(),
      usage: db.prepare<[], number>('SELECT bytes FROM store_usage WHERE id = 1').pluck(),
      // Keyset pages over primary keys: each page is an index seek, however large the store.
      blobPage: db.prepare(BLOB_PAGE),
      // Arrays, not objects: better-sqlite3 builds an object per row several times slower (eviction reads them all).
      blobTuples: db.prepare<[number, number], BlobTuple>(BLOB_PAGE).raw(),
      refPage: db
        .prepare<[number, string, number], [number, string]>('SELECT manifest, child FROM manifest_refs WHERE (manifest, child) > (?, ?) ORDER BY manifest, child LIMIT ?')
        .raw(),
      manifestPage: db.prepare<[number, number], number>('SELECT blob FROM manifests WHERE blob > ? ORDER BY blob LIMIT ?').pluck(),
      deleteBlob: db.prepare('DELETE FROM blobs WHERE digest = ?'),
      deleteLinks: db.prepare('DELETE FROM repository_digests WHERE digest = ?'),
      deleteTags: db.prepare('DELETE FROM tags WHERE digest = ?'),
      // Walks blobs newest first by blobs_last_access (CROSS JOIN keeps blobs the outer table) and stops after
      // `limit` top-level manifests: the cost follows the limit, not the store.
      recentTops: db.prepare(
        `SELECT b.digest AS digest, b.last_access AS last_access FROM blobs b CROSS JOIN manifests m ON m.blob = b.id
         WHERE b.last_access >= ? AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.child = b.digest)
         ORDER BY b.last_access DESC LIMIT ?`,
      ),
      imageSize: db.prepare(
        `WITH RECURSIVE members(digest) AS (
           SELECT ? UNION SELECT r.child FROM members JOIN blobs p ON p.digest = members.digest JOIN manifest_refs r ON r.manifest = p.id)
         SELECT COALESCE(SUM(b.size), 0) AS size, COALESCE(MAX(b.last_access), 0) AS last_access, COUNT(b.digest) AS stored, COUNT(*) AS total
         FROM members LEFT JOIN blobs b ON b.digest = members.digest`,
      ),
      tagsOf: db.prepare('SELECT registry, repository, tag FROM tags WHERE digest = ? ORDER BY registry, repository, tag'),
      reposOf: db.prepare('SELECT registry, repository FROM repository_digests WHERE digest = ? ORDER BY registry, repository'),
      tagNames: db.prepare<[string], string>("SELECT registry || '/' || repository || ':' || tag FROM tags WHERE digest = ? ORDER BY 1").pluck(),
      repositoryNames: db.prepare<[string], string>("SELECT registry || '/' || repository FROM repository_digests WHERE digest = ? ORDER BY 1").pluck(),
    };
  }

  /** A complete blob's row, if stored. */
  getBlob(digest: string): BlobRow | undefined {
    const row = this.stmt.getBlob.get(digest);
    return row && { digest: row.digest, size: row.size, mediaType: row.media_type, nodeOpen: row.node_open === 1 };
  }

  /** Records a blob whose file was just committed; `nodeOpen` when it needed no tenant credential. */
  insertBlob(digest: string, size: number, mediaType: string | null, nodeOpen = false): void {
    const now = Date.now();
    this.stmt.insertBlob.run(digest, size, mediaType, now, now, nodeOpen ? 1 : 0);
  }

  /** A stored manifest's row, as the database says now (and remembered, or forgotten, accordingly). */
  getManifest(digest: string): ManifestRow | undefined {
    const row = this.stmt.getManifest.get(digest);
    if (!row) {
      this.manifestRows?.delete(digest);
      return undefined;
    }
    const found = { digest, size: row[0], mediaType: row[1] };
    this.manifestRows?.set(digest, found);
    return found;
  }

  /**
   * A stored manifest's row for serving it: remembered when this connection is the sole deleter, else `getManifest`.
   * Only the hit path asks this; whatever decides to store or skip a manifest asks the database.
   */
  storedManifest(digest: string): ManifestRow | undefined {
    return this.manifestRows?.get(digest) ?? this.getManifest(digest);
  }

  /** Records a committed manifest, what it references, and the repository it came through, in one transaction. */
  insertManifest(manifest: ManifestRow, refs: readonly ManifestRef[], via: { registry: string; repository: string }): void {
    const now = Date.now();
    this.db.transaction(() => {
      this.stmt.insertBlob.run(manifest.digest, manifest.size, manifest.mediaType, now, now, 0);
      this.addManifestRows(manifest.digest, manifest.mediaType, refs);
      this.stmt.link.run(via.registry, via.repository, manifest.digest);
    })();
  }

  /**
   * Records the manifest row and references of content already stored as a blob (an imported archive), in one
   * transaction.
   */
  registerManifest(digest: string, mediaType: string, refs: readonly ManifestRef[]): void {
    this.db.transaction(() => this.addManifestRows(digest, mediaType, refs))();
  }

  /** The manifest row and references of a stored blob (inside the caller's transaction). */
  private addManifestRows(digest: string, mediaType: string, refs: readonly ManifestRef[]): void {
    // Checked here, not left to a NOT NULL: manifests.blob is its table's rowid, and SQLite gives a NULL rowid the
    // next free number, which would attach the row to some other blob.
    const id = this.stmt.blobId.get(digest);
    if (id === undefined) throw new Error(`manifest ${digest} has no blob row`);
    this.stmt.insertManifest.run(id, mediaType);
    for (const ref of refs) this.stmt.insertRef.run(id, ref.child, ref.kind);
  }

  /** The children a manifest references. */
  manifestRefs(digest: string): ManifestRef[] {
    return this.stmt.refs.all(digest);
  }

  /** Last known digest of a tag. */
  getTag(registry: string, repository: string, tag: string): TagRow | undefined {
    const row = this.stmt.getTag.get(registry, repository, tag);
    return row && { digest: row.digest, fetchedAt: row.fetched_at };
  }

  /** Records (or refreshes) a tag's digest as confirmed upstream now. */
  putTag(registry: string, repository: string, tag: string, digest: string, at = Date.now()): void {
    this.stmt.putTag.run(registry, repository, tag, digest, at);
  }

  /** Records that a digest was fetched through a repository. */
  linkRepository(registry: string, repository: string, digest: string): void {
    const key = `${registry}\n${repository}\n${digest}`;
    if (this.linked.has(key)) return;
    // A read first: most links a process meets were written before it started, and an INSERT that does nothing still
    // takes the write lock (a warm hit's first link at 100k rows: ~5 % of the server's CPU).
    if (this.stmt.isLinked.get(registry, repository, digest) === undefined) this.stmt.link.run(registry, repository, digest);
    this.linked.set(key, true);
  }

  /** Notes an access; written in batches so cache hits never wait on a write. */
  touch(digest: string): void {
    // Stamped now: stamping at the flush would make an old access look newer than content stored since (LRU).
    this.pendingTouches.set(digest, Date.now());
    if (!this.touchTimer) {
      this.touchTimer = setTimeout(() => void this.flushTouchesInTurns(), TOUCH_FLUSH_MS);
      this.touchTimer.unref();
    }
  }

  /**
   * Writes pending access times in transactions of TOUCH_FLUSH_ROWS, giving the event loop a turn between them.
   * Touches noted meanwhile join the rest (a digest touched again is written again, with the later time); a
   * synchronous `flushTouches` (eviction, close) meanwhile writes whatever is left.
   */
  async flushTouchesInTurns(): Promise<void> {
    if (this.touchTimer) clearTimeout(this.touchTimer);
    this.touchTimer = undefined;
    while (this.pendingTouches.size > 0) {
      const touches: [string, number][] = [];
      for (const entry of this.pendingTouches) {
        touches.push(entry);
        this.pendingTouches.delete(entry[0]);
        if (touches.length === TOUCH_FLUSH_ROWS) break;
      }
      this.writeTouches(touches);
      if (this.pendingTouches.size > 0) await nextTurn();
    }
  }

  /** Writes pending access times now. */
  flushTouches(): void {
    if (this.touchTimer) clearTimeout(this.touchTimer);
    this.touchTimer = undefined;
    if (this.pendingTouches.size === 0) return;
    const touches = [...this.pendingTouches];
    this.pendingTouches.clear();
    this.writeTouches(touches);
  }

  private writeTouches(touches: readonly (readonly [string, number])[]): void {
    this.db.transaction(() => {
      for (const [d, at] of touches) this.stmt.touch.run(at, d);
    })();
  }

  /** Whether a digest was fetched, verified or preloaded through this repository. */
  isLinked(registry: string, repository: string, digest: string): boolean {
    return this.stmt.isLinked.get(registry, repository, digest) !== undefined;
  }

  /** Stored manifests fetched or served through this repository that reference `child` directly. */
  parentsInRepository(registry: string, repository: string, child: string): string[] {
    return this.stmt.parents.all(child, registry, repository) as unknown as string[];
  }

  /** What a stored manifest is known by: `registry/repository:tag` for each tag on it, else each repository it came through. */
  imageNames(digest: string): string[] {
    const tagged = this.stmt.tagNames.all(digest);
    if (tagged.length > 0) return tagged;
    return this.stmt.repositoryNames.all(digest);
  }

  /** The `limit` most recently used images (top-level manifests, by their own last use: every pull fetches one), newest first. */
  recentImages(limit: number): ImageUsage[] {
    return this.stmt.recentTops.all(0, limit).map(({ digest, last_access }) => {
      const size = this.stmt.imageSize.get(digest) ?? { size: 0, last_access, stored: 0, total: 0 };
      const tags = this.stmt.tagsOf.all(digest);
      const names = tags.length > 0 ? tags : this.stmt.reposOf.all(digest).map((r) => ({ ...r, tag: undefined }));
      return { digest, names, storedBytes: size.size, complete: size.stored === size.total, lastAccess: Math.max(last_access, size.last_access) };
    });
  }

  /** Total bytes of stored content: the running total the blob triggers keep, never a sum over the table. */
  storedBytes(): number {
    return this.stmt.usage.get() ?? 0;
  }

  /**
   * Makes the running total agree with the rows (after a crash, or a database edited by hand); returns by how
   * many bytes it was off. A whole-table pass: start-up recovery only.
   */
  reconcileUsage(): number {
    return this.db.transaction(() => {
      const actual = this.db.prepare('SELECT COALESCE(SUM(size), 0) AS bytes, COUNT(*) AS blobs FROM blobs').get() as { bytes: number; blobs: number };
      const drift = actual.bytes - this.storedBytes();
      this.db.prepare('UPDATE store_usage SET bytes = ?, blobs = ? WHERE id = 1').run(actual.bytes, actual.blobs);
      return drift;
    })();
  }

  /** Every stored digest (startup reconciliation). */
  allBlobDigests(): string[] {
    return this.db.prepare('SELECT digest FROM blobs').pluck().all() as string[];
  }

  /** Removes a blob row and, by cascade, its manifest row and references. */
  deleteBlob(digest: string): void {
    this.stmt.deleteBlob.run(digest);
    this.manifestRows?.delete(digest);
  }

  /** Removes blob rows (as `deleteBlob`) in one transaction. */
  deleteBlobs(digests: readonly string[]): void {
    this.db.transaction(() => {
      for (const digest of digests) this.stmt.deleteBlob.run(digest);
    })();
    for (const digest of digests) this.manifestRows?.delete(digest);
  }

  /**
   * Evicts content's rows in one transaction: its tags, repository links and blob row (and, by cascade, manifest
   * rows, references, pull records and preloaded marks).
   */
  deleteContent(digests: readonly string[]): void {
    this.db.transaction(() => {
      for (const d of digests) {
        this.stmt.deleteTags.run(d);
        this.stmt.deleteLinks.run(d);
        this.stmt.deleteBlob.run(d);
      }
    })();
    // Rare (eviction), so the whole memo goes rather than an index by digest being kept for it.
    this.linked.clear();
    for (const d of digests) this.manifestRows?.delete(d);
  }

  /** Up to `limit` blobs after rowid `after`, in rowid order (a keyset page for eviction's list). */
  blobPage(after: number, limit: number): BlobPageRow[] {
    return this.stmt.blobPage.all(after, limit);
  }

  /** `blobPage` as arrays. */
  blobTuples(after: number, limit: number): BlobTuple[] {
    return this.stmt.blobTuples.all(after, limit);
  }

  /** Up to `limit` references [manifest's blob rowid, child digest] after `after`, in key order. */
  refPage(after: readonly [manifest: number, child: string], limit: number): [manifest: number, child: string][] {
    return this.stmt.refPage.all(after[0], after[1], limit);
  }

  /** Up to `limit` manifests' blob rowids after `after`, in order. */
  manifestPage(after: number, limit: number): number[] {
    return this.stmt.manifestPage.all(after, limit);
  }

  /** Throws when the database cannot answer (closed, file gone): the readiness probe. */
  ping(): void {
    this.db.prepare('SELECT 1').get();
  }

  /** Flushes and closes the database. */
  close(): void {
    this.flushTouches();
    // Nothing is answered from memory once the database that said so is closed.
    this.manifestRows?.clear();
    this.db.close();
  }
}
