import { mkdtemp, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { openDatabase } from '../../src/db/database.js';
import { Evictor } from '../../src/lifecycle/eviction.js';
import { verifyStore } from '../../src/lifecycle/integrity.js';
import { CLEAN_SHUTDOWN_FILE } from '../../src/store/lock.js';
import { startCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage, sha256, type FakeImage } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';
import { cacheToken } from '../support/registry-auth.js';

/** Tables whose rows grow with the store (pull_intents holds only pulls in flight; meta and store_usage are fixed). */
const GROWING = ['blobs', 'manifests', 'manifest_refs', 'tags', 'repository_digests', 'pull_records', 'pull_record_credentials', 'preloaded'];

/**
 * Queries that visit every row on purpose, each run by a whole-store operation only, never per request or per blob.
 * Anything else that scans a growing table fails the test.
 */
const WHOLE_STORE_PASSES: Record<string, string> = {
  'SELECT digest FROM blobs': 'crash reconciliation and `verify` list every stored digest',
  'SELECT COALESCE(SUM(size), 0) AS bytes, COUNT(*) AS blobs FROM blobs': 'the running total is checked against the rows after a crash only',
};
/** The `records` listing (all of it, by definition): records, their credential hashes, preloaded manifests. */
const RECORDS_LISTING = [
  'SELECT p.registry, p.repository, b.digest, p.node_pods_accessible, p.created_at, p.last_verified',
  'SELECT c.registry, c.repository, b.digest, c.credential_hash FROM pull_record_credentials c',
  "SELECT substr(p.image, 1, instr(p.image, '/') - 1)",
];
/** Marking everything stored as preloaded, once per store when verification is first enabled. */
const FIRST_ENABLE = "SELECT b.id, 'first-enable', '', ? FROM blobs b";

describe('query plans', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  it('no query the cache runs scans a table that grows with the store, except the named whole-store passes', async () => {
    // Every statement prepared on any connection while the cache serves, verifies, evicts, verifies files and recovers.
    const prepared = new Set<string>();
    const original = Database.prototype.prepare;
    Database.prototype.prepare = function (this: Database.Database, ...args: Parameters<typeof original>) {
      prepared.add(args[0]);
      return original.apply(this, args);
    } as typeof original;
    cleanup.push(async () => {
      Database.prototype.prepare = original;
    });

    const images: Record<string, FakeImage> = { 'team/one': makeImage([3000, 5000]), 'team/two': makeImage([4000]) };
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    for (const [repo, image] of Object.entries(images)) upstream.push(repo, 'v1', image);
    upstream.auth = { kind: 'basic', users: { alice: 'alice-pw' } };
    const storage = await mkdtemp(join(tmpdir(), 'rc-plans-'));
    cleanup.push(() => rm(storage, { recursive: true, force: true }));
    const settings = { imagePullCredentialsVerificationPolicy: 'AlwaysVerify', tagTtl: '0s', maxStorageBytes: 1_000_000, gcInterval: '1h' };
    const cache = await startCache({ [upstream.host]: upstream.url }, settings, storage);
    for (const [repo, image] of Object.entries(images)) {
      const headers = { authorization: `Bearer ${await cacheToken(cache.url, upstream.host, repo, { username: 'alice', password: 'alice-pw' })}` };
      // Twice: a miss, then a hit that revalidates the tag and verifies the credential against the records.
      for (let i = 0; i < 2; i++) {
        expect((await call(`${cache.url}/v2/${repo}/manifests/v1?ns=${upstream.host}`, { headers })).status).toBe(200);
        for (const b of image.blobs) expect(sha256((await call(`${cache.url}/v2/${repo}/blobs/${b.digest}?ns=${upstream.host}`, { headers })).body)).toBe(b.digest);
        await cache.services.blobs.settle();
      }
      expect((await call(`${cache.url}/v2/${repo}/manifests/${image.manifestDigest}?ns=${upstream.host}`, { headers, method: 'HEAD' })).status).toBe(200);
    }
    expect((await call(`${cache.url}/metrics`)).status).toBe(200);
    // The status page's queries (recent images) run every few seconds while someone watches it.
    expect((await cache.services.status.report()).images.length).toBeGreaterThan(0);
    // The listing read in bulk still carries each record's credential hash, in (registry, repository, digest) order.
    const listed = cache.services.records.list();
    expect(listed.some((r) => r.repository === 'team/one' && r.digest === images['team/one']?.manifestDigest && r.credentialHashes.length === 1)).toBe(true);
    const keys = listed.map((r) => `${r.registry}\0${r.repository}\0${r.digest}`);
    expect(keys).toEqual([...keys].sort());
    await verifyStore(cache.services, false);
    const { services } = cache;
    const evictor = new Evictor({
      store: services.store,
      metadata: services.metadata,
      settings: { highThresholdPercent: 1, lowThresholdPercent: 0, maxStorageBytes: 1_000, pinnedImages: [`${upstream.host}/team/two:v1`] },
      log: services.log,
      isBusy: () => false,
    });
    expect((await evictor.collect()).evicted.length).toBeGreaterThan(0);
    await cache.stop({ keepStorage: true });
    // A start without the clean-shutdown mark: crash recovery's queries too.
    await unlink(join(storage, CLEAN_SHUTDOWN_FILE));
    const recovered = await startCache({ [upstream.host]: upstream.url }, settings, storage);
    await recovered.stop({ keepStorage: true });
    Database.prototype.prepare = original;

    const db = openDatabase(join(storage, 'registry-cache.db'));
    cleanup.push(async () => {
      db.close();
    });
    const scans: string[] = [];
    let checked = 0;
    for (const sql of prepared) {
      if (!/^\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b/i.test(sql)) continue;
      if (sql in WHOLE_STORE_PASSES || RECORDS_LISTING.some((listing) => sql.trimStart().startsWith(listing)) || sql.includes(FIRST_ENABLE)) continue;
      const params = (sql.match(/\?/g) ?? []).length;
      const plan = db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...Array.from({ length: params }, () => null)) as { detail: string }[];
      checked++;
      for (const { detail } of plan) {
        const m = /^SCAN (\w+)/.exec(detail);
        if (!m) continue;
        // Plans name a table by its alias: resolve `FROM blobs b` / `JOIN manifests m` back to the table.
        const name = m[1] as string;
        const table = GROWING.includes(name) ? name : new RegExp(`\\b(\\w+)\\s+(?:AS\\s+)?${name}\\b`, 'i').exec(sql)?.[1];
        if (table && GROWING.includes(table)) scans.push(`${detail}  <-  ${sql.replace(/\s+/g, ' ').trim()}`);
      }
    }
    expect(checked).toBeGreaterThan(30);
    expect(scans).toEqual([]);
  });
});
