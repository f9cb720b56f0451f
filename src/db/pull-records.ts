import { BLOB_ID, type Db } from './database.js';

/** Who a successful upstream pull or verification is recorded for. */
export type Puller = { kind: 'nodePodsAccessible' } | { kind: 'credential'; hash: string };

/** What a pull record grants one client. */
export interface RecordAccess {
  preloaded: boolean;
  nodePodsAccessible: boolean;
  /** The client's credential is among the recorded pullers. */
  credential: boolean;
}

/** One pull record: an image digest pulled through one repository of one registry. */
export interface PullRecord {
  registry: string;
  repository: string;
  digest: string;
  nodePodsAccessible: boolean;
  credentialHashes: string[];
  createdAt: number;
  lastVerified: number | null;
  preloaded: boolean;
}

const META_VERIFICATION_INITIALIZED = 'verification_initialized_at';

/** The kubelet's pull records, kept in SQLite next to the content they describe (policy/ decides with them). */
export class PullRecords {
  private readonly stmt;

  constructor(private readonly db: Db) {
    this.stmt = {
      get: db.prepare<[string, string, string], { node_pods_accessible: number; created_at: number; last_verified: number | null }>(
        `SELECT node_pods_accessible, created_at, last_verified FROM pull_records WHERE registry = ? AND repository = ? AND blob = ${BLOB_ID}`,
      ),
      hashes: db.prepare<[string, string, string], string>(
        `SELECT credential_hash FROM pull_record_credentials WHERE registry = ? AND repository = ? AND blob = ${BLOB_ID}`,
      ),
      hasHash: db.prepare<[string, string, string, string], number>(
        `SELECT 1 FROM pull_record_credentials WHERE registry = ? AND repository = ? AND blob = ${BLOB_ID} AND credential_hash = ?`,
      ),
      upsert: db.prepare<[string, string, string, number, number, number]>(
        `INSERT INTO pull_records (registry, repository, blob, node_pods_accessible, created_at, last_verified)
         VALUES (?, ?, ${BLOB_ID}, ?, ?, ?)
         ON CONFLICT (registry, repository, blob) DO UPDATE SET
           node_pods_accessible = max(node_pods_accessible, excluded.node_pods_accessible),
           last_verified = excluded.last_verified`,
      ),
      addHash: db.prepare<[string, string, string, string, number]>(
        `INSERT INTO pull_record_credentials (registry, repository, blob, credential_hash, verified_at) VALUES (?, ?, ${BLOB_ID}, ?, ?)
         ON CONFLICT DO UPDATE SET verified_at = excluded.verified_at`,
      ),
      // Preloaded under this name (given at preload, or the name it was fetched through before verification was
      // first enabled), and no pull record for the digest anywhere: one real pull ends "preloaded" for every name.
      preloaded: db.prepare<[string, string, string, string, string], number>(
        `SELECT 1 FROM blobs b JOIN preloaded p ON p.blob = b.id
         WHERE b.digest = ?
           AND (p.image = ? OR (p.image = '' AND EXISTS (
                 SELECT 1 FROM repository_digests d WHERE d.registry = ? AND d.repository = ? AND d.digest = ?)))
           AND NOT EXISTS (SELECT 1 FROM pull_records r WHERE r.blob = p.blob)
         LIMIT 1`,
      ),
      anyPreloaded: db.prepare<[string], number>(`SELECT 1 FROM preloaded WHERE blob = ${BLOB_ID} LIMIT 1`),
      importedAs: db.prepare<[string, string], number>(`SELECT 1 FROM preloaded WHERE blob = ${BLOB_ID} AND image = ? AND source = 'preload'`),
      markPreloaded: db.prepare<[string, string, string, number]>(
        `INSERT INTO preloaded (blob, source, image, imported_at) VALUES (${BLOB_ID}, ?, ?, ?) ON CONFLICT DO NOTHING`,
      ),
      blobExists: db.prepare<[string], number>('SELECT 1 FROM blobs WHERE digest = ?'),
      openRepository: db.prepare<[string, string], number>(
        'SELECT 1 FROM pull_records WHERE registry = ? AND repository = ? AND node_pods_accessible = 1 LIMIT 1',
      ),
      getMeta: db.prepare<[string], string>('SELECT value FROM meta WHERE key = ?'),
      setMeta: db.prepare<[string, string]>('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
    };
    this.stmt.hashes.pluck();
    this.stmt.hasHash.pluck();
    this.stmt.preloaded.pluck();
    this.stmt.anyPreloaded.pluck();
    this.stmt.importedAs.pluck();
    this.stmt.blobExists.pluck();
    this.stmt.openRepository.pluck();
    this.stmt.getMeta.pluck();
  }

  /** The record for a digest pulled through a repository, if any. */
  get(registry: string, repository: string, digest: string): PullRecord | undefined {
    const row = this.stmt.get.get(registry, repository, digest);
    const preloaded = this.isPreloaded(registry, repository, digest);
    if (!row) {
      return preloaded
        ? { registry, repository, digest, nodePodsAccessible: false, credentialHashes: [], createdAt: 0, lastVerified: null, preloaded }
        : undefined;
    }
    return {
      registry,
      repository,
      digest,
      nodePodsAccessible: row.node_pods_accessible === 1,
      credentialHashes: this.stmt.hashes.all(registry, repository, digest) as unknown as string[],
      createdAt: row.created_at,
      lastVerified: row.last_verified,
      preloaded,
    };
  }

  /**
   * What the record for a digest says about one client, without reading the credential hashes it holds: any client
   * whose credential an upstream accepts adds one (a registry without auth accepts made-up ones), so a check that
   * read them all would cost every client time in their number. The hash is looked up by the primary key; the lookup
   * need not be constant-time, as a keyed hash tells nothing to a client that does not hold the node secret.
   */
  access(registry: string, repository: string, digest: string, hash: string | undefined): RecordAccess | undefined {
    const row = this.stmt.get.get(registry, repository, digest);
    const preloaded = this.isPreloaded(registry, repository, digest);
    if (!row && !preloaded) return undefined;
    return {
      preloaded,
      nodePodsAccessible: row?.node_pods_accessible === 1,
      credential: row !== undefined && hash !== undefined && this.stmt.hasHash.get(registry, repository, digest, hash) !== undefined,
    };
  }

  /** Whether anything of this repository was pulled anonymously or with node-wide credentials: any pod on the node may. */
  hasNodePodsAccessible(registry: string, repository: string): boolean {
    return this.stmt.openRepository.get(registry, repository) !== undefined;
  }

  /**
   * Preloaded: content that entered the store without a pull (preload, or present when verification was first
   * enabled) and has no pull record for this repository since.
   */
  isPreloaded(registry: string, repository: string, digest: string): boolean {
    return this.stmt.preloaded.get(digest, `${registry}/${repository}`, registry, repository, digest) !== undefined;
  }

  /** Whether `preload` imported this digest under this image name (whatever pulls happened since). */
  importedAs(registry: string, repository: string, digest: string): boolean {
    return this.stmt.importedAs.get(digest, `${registry}/${repository}`) !== undefined;
  }

  /** Records a successful upstream pull or verification. The content must already be stored. */
  recordSuccess(registry: string, repository: string, digest: string, puller: Puller): void {
    const now = Date.now();
    this.db.transaction(() => {
      if (this.stmt.blobExists.get(digest) === undefined) return;
      this.stmt.upsert.run(registry, repository, digest, puller.kind === 'nodePodsAccessible' ? 1 : 0, now, now);
      if (puller.kind === 'credential') this.stmt.addHash.run(registry, repository, digest, puller.hash, now);
    })();
  }

  /** Marks stored content as preloaded (imported outside a pull). */
  markPreloaded(digest: string, source: 'preload' | 'first-enable', image?: string): void {
    this.stmt.markPreloaded.run(digest, source, image ?? '', Date.now());
  }

  /**
   * The first time verification is enabled on a store, everything already in it without a record counts as
   * preloaded (the kubelet's rule). Returns how many digests were marked, or undefined if this ran before.
   */
  initializeVerification(): number | undefined {
    if (this.stmt.getMeta.get(META_VERIFICATION_INITIALIZED) !== undefined) return undefined;
    let marked = 0;
    this.db.transaction(() => {
      marked = this.db
        .prepare(
          `INSERT INTO preloaded (blob, source, image, imported_at)
           SELECT b.id, 'first-enable', '', ? FROM blobs b
           WHERE NOT EXISTS (SELECT 1 FROM pull_records r WHERE r.blob = b.id)
           ON CONFLICT DO NOTHING`,
        )
        .run(Date.now()).changes;
      this.stmt.setMeta.run(META_VERIFICATION_INITIALIZED, String(Date.now()));
    })();
    return marked;
  }

  /** Every record (and every preloaded manifest without one), for `registry-cache records`. */
  list(): PullRecord[] {
    // Records and their credential hashes in two ordered passes, not three queries per record (95k records took
    // seconds). A record's digest has a pull record, so it is never preloaded (see isPreloaded).
    // Rows as arrays: better-sqlite3 builds an object per row ~4x slower (100k records: 0.36 against 0.09 CPU s).
    const records = this.db
      .prepare(
        `SELECT p.registry, p.repository, b.digest, p.node_pods_accessible, p.created_at, p.last_verified
         FROM pull_records p JOIN blobs b ON b.id = p.blob ORDER BY p.registry, p.repository, b.digest`,
      )
      .raw()
      .all() as [string, string, string, number, number, number | null][];
    const key = (r: { registry: string; repository: string; digest: string }): string => `${r.registry}\0${r.repository}\0${r.digest}`;
    const hashes = new Map<string, string[]>();
    const hashRows = this.db
      .prepare('SELECT c.registry, c.repository, b.digest, c.credential_hash FROM pull_record_credentials c JOIN blobs b ON b.id = c.blob')
      .all() as {
      registry: string;
      repository: string;
      digest: string;
      credential_hash: string;
    }[];
    for (const h of hashRows) {
      let list = hashes.get(key(h));
      if (!list) hashes.set(key(h), (list = []));
      list.push(h.credential_hash);
    }
    const out: PullRecord[] = records.map(([registry, repository, digest, nodePodsAccessible, createdAt, lastVerified]) => ({
      registry,
      repository,
      digest,
      nodePodsAccessible: nodePodsAccessible === 1,
      credentialHashes: hashes.size > 0 ? (hashes.get(`${registry}\0${repository}\0${digest}`) ?? []) : [],
      createdAt,
      lastVerified,
      preloaded: false,
    }));
    const preloadedRows = this.db
      .prepare(
        `SELECT substr(p.image, 1, instr(p.image, '/') - 1) AS registry, substr(p.image, instr(p.image, '/') + 1) AS repository, b.digest AS digest
           FROM preloaded p JOIN manifests m ON m.blob = p.blob JOIN blobs b ON b.id = p.blob WHERE p.image != ''
         UNION SELECT d.registry, d.repository, b.digest
           FROM preloaded p JOIN manifests m ON m.blob = p.blob JOIN blobs b ON b.id = p.blob JOIN repository_digests d ON d.digest = b.digest
           WHERE p.image = ''`,
      )
      .all() as { registry: string; repository: string; digest: string }[];
    // The records come sorted by their key: only preloaded names without a record are merged in.
    if (preloadedRows.length === 0) return out;
    const recorded = new Set(out.map(key));
    const extra: PullRecord[] = [];
    for (const r of preloadedRows) {
      if (recorded.has(key(r))) continue;
      const rec = this.get(r.registry, r.repository, r.digest);
      if (rec) extra.push(rec);
      else if (this.stmt.anyPreloaded.get(r.digest) !== undefined) {
        extra.push({ ...r, nodePodsAccessible: false, credentialHashes: [], createdAt: 0, lastVerified: null, preloaded: true });
      }
    }
    const keyed = [...out, ...extra].map((r) => ({ k: key(r), r }));
    return keyed.sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : 0)).map((e) => e.r);
  }
}
