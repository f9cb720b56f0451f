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
];
