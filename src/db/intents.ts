import type { Statement } from 'better-sqlite3';
import { BLOB_ID, type Db } from './database.js';

/**
 * Pull intents, the kubelet's crash guard: one is written before an upstream pull and removed when it ends, so a
 * pull interrupted by a crash is found at the next start.
 */
export class PullIntentLog {
  private readonly stmt: {
    begin: Statement<[string, string, string, number]>;
    end: Statement<[number]>;
    all: Statement<[], { id: number; registry: string; repository: string; reference: string }>;
    count: Statement<[], number>;
    tagDigest: Statement<[string, string, string], string>;
    blobExists: Statement<[string], number>;
    ensureRecord: Statement<[string, string, string, number]>;
  };

  constructor(private readonly db: Db) {
    this.stmt = {
      begin: db.prepare('INSERT INTO pull_intents (registry, repository, reference, started_at) VALUES (?, ?, ?, ?)'),
      end: db.prepare('DELETE FROM pull_intents WHERE id = ?'),
      all: db.prepare('SELECT id, registry, repository, reference FROM pull_intents'),
      count: db.prepare<[], number>('SELECT COUNT(*) FROM pull_intents').pluck(),
      tagDigest: db.prepare<[string, string, string], string>('SELECT digest FROM tags WHERE registry = ? AND repository = ? AND tag = ?').pluck(),
      blobExists: db.prepare<[string], number>('SELECT 1 FROM blobs WHERE digest = ?').pluck(),
      ensureRecord: db.prepare(
        `INSERT INTO pull_records (registry, repository, blob, node_pods_accessible, created_at)
         VALUES (?, ?, ${BLOB_ID}, 0, ?) ON CONFLICT DO NOTHING`,
      ),
    };
  }

  /** Writes an intent before an upstream pull; returns its id for `end`. */
  begin(registry: string, repository: string, reference: string): number {
    return Number(this.stmt.begin.run(registry, repository, reference, Date.now()).lastInsertRowid);
  }

  /** Removes an intent once its pull ended (successfully or not). */
  end(id: number): void {
    this.stmt.end.run(id);
  }

  /** How many intents are open (pulls in flight, or left by a crash before `recover`). */
  pending(): number {
    return this.stmt.count.get() ?? 0;
  }

  /**
   * After a crash: each leftover intent whose content is present becomes a record with no credentials, which
   * forces verification next time, as the kubelet does. Returns how many intents were recovered.
   */
  recover(): number {
    const intents = this.stmt.all.all();
    const now = Date.now();
    this.db.transaction(() => {
      for (const i of intents) {
        const digest = i.reference.includes(':') ? i.reference : this.stmt.tagDigest.get(i.registry, i.repository, i.reference);
        if (digest && this.stmt.blobExists.get(digest) !== undefined) this.stmt.ensureRecord.run(i.registry, i.repository, digest, now);
        this.stmt.end.run(i.id);
      }
    })();
    return intents.length;
  }
}
