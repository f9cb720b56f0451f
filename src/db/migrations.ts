/** Schema migrations, applied in order; `user_version` records how many ran. Never edit a shipped one. */
export const MIGRATIONS: readonly { name: string; sql: string }[] = [
  {
    name: '001-initial',
    sql: `
      -- One row per complete, verified file under blobs/ (manifests included).
      CREATE TABLE blobs (
        digest      TEXT PRIMARY KEY,
        size        INTEGER NOT NULL,
        media_type  TEXT,
        created_at  INTEGER NOT NULL,
        last_access INTEGER NOT NULL
      ) STRICT;
      -- Blobs that are manifests, with the media type they were served with.
      CREATE TABLE manifests (
        digest     TEXT PRIMARY KEY REFERENCES blobs(digest) ON DELETE CASCADE,
        media_type TEXT NOT NULL
      ) STRICT;
      -- What each manifest references: child manifests of an index, config and layers of an image.
      CREATE TABLE manifest_refs (
        manifest TEXT NOT NULL REFERENCES manifests(digest) ON DELETE CASCADE,
        child    TEXT NOT NULL,
        kind     TEXT NOT NULL CHECK (kind IN ('manifest', 'blob')),
        PRIMARY KEY (manifest, child)
      ) STRICT, WITHOUT ROWID;
      CREATE INDEX manifest_refs_child ON manifest_refs(child);
      -- Tag → digest answers from upstreams, with when they were last confirmed.
      CREATE TABLE tags (
        registry   TEXT NOT NULL,
        repository TEXT NOT NULL,
        tag        TEXT NOT NULL,
        digest     TEXT NOT NULL,
        fetched_at INTEGER NOT NULL,
        PRIMARY KEY (registry, repository, tag)
      ) STRICT, WITHOUT ROWID;
      -- Which repositories of which registries each digest was fetched through.
      CREATE TABLE repository_digests (
        registry   TEXT NOT NULL,
        repository TEXT NOT NULL,
        digest     TEXT NOT NULL,
        PRIMARY KEY (registry, repository, digest)
      ) STRICT, WITHOUT ROWID;
      CREATE INDEX repository_digests_digest ON repository_digests(digest);
    `,
  },
  {
    name: '002-pull-records',
    sql: `
      -- The kubelet's pull records, at the registry: who successfully pulled (or verified) each digest through
      -- each repository. A record exists only while its content does (cascade from blobs).
      CREATE TABLE pull_records (
        registry              TEXT NOT NULL,
        repository            TEXT NOT NULL,
        digest                TEXT NOT NULL REFERENCES blobs(digest) ON DELETE CASCADE,
        node_pods_accessible  INTEGER NOT NULL DEFAULT 0,
        created_at            INTEGER NOT NULL,
        last_verified         INTEGER,
        PRIMARY KEY (registry, repository, digest)
      ) STRICT, WITHOUT ROWID;
      CREATE INDEX pull_records_digest ON pull_records(digest);
      -- Keyed hashes (HMAC-SHA-256 with the node secret) of credentials that succeeded. Never the credential.
      CREATE TABLE pull_record_credentials (
        registry        TEXT NOT NULL,
        repository      TEXT NOT NULL,
        digest          TEXT NOT NULL,
        credential_hash TEXT NOT NULL,
        verified_at     INTEGER NOT NULL,
        PRIMARY KEY (registry, repository, digest, credential_hash),
        FOREIGN KEY (registry, repository, digest) REFERENCES pull_records(registry, repository, digest) ON DELETE CASCADE
      ) STRICT, WITHOUT ROWID;
      -- Written before an upstream pull starts, removed when it ends; leftovers mean a crash mid-pull.
      CREATE TABLE pull_intents (
        id         INTEGER PRIMARY KEY,
        registry   TEXT NOT NULL,
        repository TEXT NOT NULL,
        reference  TEXT NOT NULL,
        started_at INTEGER NOT NULL
      ) STRICT;
      -- Content that entered the store without a pull: imported by preload (under the image name it was given),
      -- or present when verification was first enabled (image '': the names it was fetched through count).
      CREATE TABLE preloaded (
        digest      TEXT NOT NULL REFERENCES blobs(digest) ON DELETE CASCADE,
        image       TEXT NOT NULL DEFAULT '',
        source      TEXT NOT NULL,
        imported_at INTEGER NOT NULL,
        PRIMARY KEY (digest, image)
      ) STRICT, WITHOUT ROWID;
      CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
      ) STRICT;
    `,
  },
  {
    name: '003-store-usage-and-indexes',
    sql: `
      -- The store's size as a running total, kept by triggers in the same transaction as every insert and delete
      -- of a blob row, so checking usage never sums the table (a SUM per download made filling quadratic).
      CREATE TABLE store_usage (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        bytes INTEGER NOT NULL,
        blobs INTEGER NOT NULL
      ) STRICT;
      INSERT INTO store_usage (id, bytes, blobs) SELECT 1, COALESCE(SUM(size), 0), COUNT(*) FROM blobs;
      CREATE TRIGGER blobs_usage_insert AFTER INSERT ON blobs BEGIN
        UPDATE store_usage SET bytes = bytes + new.size, blobs = blobs + 1 WHERE id = 1;
      END;
      CREATE TRIGGER blobs_usage_delete AFTER DELETE ON blobs BEGIN
        UPDATE store_usage SET bytes = bytes - old.size, blobs = blobs - 1 WHERE id = 1;
      END;
      CREATE TRIGGER blobs_usage_resize AFTER UPDATE OF size ON blobs BEGIN
        UPDATE store_usage SET bytes = bytes - old.size + new.size WHERE id = 1;
      END;
      -- Eviction deletes a digest's tags; without this each delete scanned every tag.
      CREATE INDEX tags_digest ON tags(digest);
    `,
  },
  {
    name: '004-blobs-last-access-index',
    sql: `
      -- The status page lists the most recently used images: newest first by this index, stopping after a few.
      CREATE INDEX blobs_last_access ON blobs(last_access);
    `,
  },
  {
    name: '005-blobs-node-open',
    sql: `
      -- 1 when the blob was fetched without a tenant credential (anonymous or the node's own): any pod on the node
      -- could pull it, so other nodes may be offered it. Rows from before sharing existed are not offered.
      ALTER TABLE blobs ADD COLUMN node_open INTEGER NOT NULL DEFAULT 0;
    `,
  },
  {
    name: '006-integer-blob-keys',
    sql: `
      -- Tables that hang off a stored blob name it by its row id, not its 71-character digest: eviction deletes 10 %
      -- of the store's rows, and with random digests as keys that dirtied nearly every leaf page of nine B-trees
      -- (100k rows: 27k pages, 0.65 s of deletes and commit; keyed by id 17k pages, 0.39 s). Row ids are kept, so
      -- blobs keep their order. Tags and repository links stay digests: they may name content not (or no longer) stored.
      -- New tables are built beside the old ones and renamed in, so no foreign key ever points at a dropped table.
      DROP TRIGGER blobs_usage_insert;
      DROP TRIGGER blobs_usage_delete;
      DROP TRIGGER blobs_usage_resize;
      -- AUTOINCREMENT: an id is never given again after its row is deleted, so nothing read by id before (eviction's
      -- list is read in pages, between requests) can be taken for content stored since.
      CREATE TABLE blobs_v6 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        digest      TEXT NOT NULL UNIQUE,
        size        INTEGER NOT NULL,
        media_type  TEXT,
        created_at  INTEGER NOT NULL,
        last_access INTEGER NOT NULL,
        node_open   INTEGER NOT NULL DEFAULT 0
      ) STRICT;
      INSERT INTO blobs_v6 (id, digest, size, media_type, created_at, last_access, node_open)
        SELECT rowid, digest, size, media_type, created_at, last_access, node_open FROM blobs ORDER BY rowid;
      CREATE TABLE manifests_v6 (
        blob       INTEGER PRIMARY KEY REFERENCES blobs_v6(id) ON DELETE CASCADE,
        media_type TEXT NOT NULL
      ) STRICT;
      INSERT INTO manifests_v6 (blob, media_type) SELECT b.id, m.media_type FROM manifests m JOIN blobs_v6 b USING (digest) ORDER BY b.id;
      -- A reference's child stays a digest: an index's platform manifest or a layer may not be stored (yet).
      CREATE TABLE manifest_refs_v6 (
        manifest INTEGER NOT NULL REFERENCES manifests_v6(blob) ON DELETE CASCADE,
        child    TEXT NOT NULL,
        kind     TEXT NOT NULL CHECK (kind IN ('manifest', 'blob')),
        PRIMARY KEY (manifest, child)
      ) STRICT, WITHOUT ROWID;
      INSERT INTO manifest_refs_v6 (manifest, child, kind)
        SELECT b.id, r.child, r.kind FROM manifest_refs r JOIN blobs_v6 b ON b.digest = r.manifest ORDER BY b.id, r.child;
      CREATE TABLE pull_records_v6 (
        registry              TEXT NOT NULL,
        repository            TEXT NOT NULL,
        blob                  INTEGER NOT NULL REFERENCES blobs_v6(id) ON DELETE CASCADE,
        node_pods_accessible  INTEGER NOT NULL DEFAULT 0,
        created_at            INTEGER NOT NULL,
        last_verified         INTEGER,
        PRIMARY KEY (registry, repository, blob)
      ) STRICT, WITHOUT ROWID;
      INSERT INTO pull_records_v6 (registry, repository, blob, node_pods_accessible, created_at, last_verified)
        SELECT p.registry, p.repository, b.id, p.node_pods_accessible, p.created_at, p.last_verified
        FROM pull_records p JOIN blobs_v6 b USING (digest);
      CREATE TABLE pull_record_credentials_v6 (
        registry        TEXT NOT NULL,
        repository      TEXT NOT NULL,
        blob            INTEGER NOT NULL,
        credential_hash TEXT NOT NULL,
        verified_at     INTEGER NOT NULL,
        PRIMARY KEY (registry, repository, blob, credential_hash),
        FOREIGN KEY (registry, repository, blob) REFERENCES pull_records_v6(registry, repository, blob) ON DELETE CASCADE
      ) STRICT, WITHOUT ROWID;
      INSERT INTO pull_record_credentials_v6 (registry, repository, blob, credential_hash, verified_at)
        SELECT c.registry, c.repository, p.blob, c.credential_hash, c.verified_at
        FROM pull_record_credentials c JOIN blobs_v6 b USING (digest)
        JOIN pull_records_v6 p ON p.registry = c.registry AND p.repository = c.repository AND p.blob = b.id;
      CREATE TABLE preloaded_v6 (
        blob        INTEGER NOT NULL REFERENCES blobs_v6(id) ON DELETE CASCADE,
        image       TEXT NOT NULL DEFAULT '',
        source      TEXT NOT NULL,
        imported_at INTEGER NOT NULL,
        PRIMARY KEY (blob, image)
      ) STRICT, WITHOUT ROWID;
      INSERT INTO preloaded_v6 (blob, image, source, imported_at)
        SELECT b.id, p.image, p.source, p.imported_at FROM preloaded p JOIN blobs_v6 b USING (digest);
      -- Children before parents: nothing left references a table when it goes.
      DROP TABLE pull_record_credentials;
      DROP TABLE pull_records;
      DROP TABLE preloaded;
      DROP TABLE manifest_refs;
      DROP TABLE manifests;
      DROP TABLE blobs;
      ALTER TABLE blobs_v6 RENAME TO blobs;
      ALTER TABLE manifests_v6 RENAME TO manifests;
      ALTER TABLE manifest_refs_v6 RENAME TO manifest_refs;
      ALTER TABLE pull_records_v6 RENAME TO pull_records;
      ALTER TABLE pull_record_credentials_v6 RENAME TO pull_record_credentials;
      ALTER TABLE preloaded_v6 RENAME TO preloaded;
      CREATE INDEX blobs_last_access ON blobs(last_access);
      CREATE INDEX manifest_refs_child ON manifest_refs(child);
      CREATE INDEX pull_records_blob ON pull_records(blob);
      CREATE TRIGGER blobs_usage_insert AFTER INSERT ON blobs BEGIN
        UPDATE store_usage SET bytes = bytes + new.size, blobs = blobs + 1 WHERE id = 1;
      END;
      CREATE TRIGGER blobs_usage_delete AFTER DELETE ON blobs BEGIN
        UPDATE store_usage SET bytes = bytes - old.size, blobs = blobs - 1 WHERE id = 1;
      END;
      CREATE TRIGGER blobs_usage_resize AFTER UPDATE OF size ON blobs BEGIN
        UPDATE store_usage SET bytes = bytes - old.size + new.size WHERE id = 1;
      END;
    `,
  },
];
