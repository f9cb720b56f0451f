import { mkdir, mkdtemp, readdir, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { openDatabase } from '../../src/db/database.js';
import { MIGRATIONS } from '../../src/db/migrations.js';
import { Metadata } from '../../src/db/content-index.js';
import { Evictor } from '../../src/lifecycle/eviction.js';
import { createLogger } from '../../src/log.js';
import { BlobStore } from '../../src/store/blob-store.js';
import { CLEAN_SHUTDOWN_FILE, LOCK_FILE } from '../../src/store/lock.js';
import { startCache } from '../support/cache-server.js';
import { runCli } from '../support/cli.js';
import { FakeUpstream, makeImage, sha256, type FakeImage } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const digestOf = (i: number): string => `sha256:${i.toString(16).padStart(64, '0')}`;

describe('costs that stay flat as the store grows', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    vi.restoreAllMocks();
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function tempDir(prefix: string): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), prefix));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    return dir;
  }

  it('keeps the stored bytes as a running total through inserts, duplicates, manifests, deletes and eviction', async () => {
    const dir = await tempDir('rc-usage-');
    // The connection itself, to check the total against the rows, roll a transaction back and edit the total by hand.
    const db = openDatabase(join(dir, 'db'));
    const metadata = new Metadata(db);
    cleanup.push(async () => metadata.close());
    const sum = (): number => db.prepare('SELECT COALESCE(SUM(size), 0) FROM blobs').pluck().get() as number;
    metadata.insertBlob(digestOf(1), 1000, null);
    metadata.insertBlob(digestOf(2), 2500, null);
    // A second insert of the same digest changes nothing.
    metadata.insertBlob(digestOf(2), 2500, null);
    metadata.insertManifest({ digest: digestOf(3), size: 300, mediaType: OCI_MANIFEST }, [{ child: digestOf(1), kind: 'blob' }], { registry: 'r', repository: 'a' });
    expect(metadata.storedBytes()).toBe(3800);
    metadata.deleteBlob(digestOf(2));
    expect(metadata.storedBytes()).toBe(1300);
    expect(metadata.storedBytes()).toBe(sum());
    // A rollback takes the total back with the rows.
    expect(() =>
      db.transaction(() => {
        metadata.insertBlob(digestOf(4), 9999, null);
        throw new Error('rolled back');
      })(),
    ).toThrow('rolled back');
    expect(metadata.storedBytes()).toBe(1300);
    const store = new BlobStore(dir);
    const evictor = new Evictor({ store, metadata, settings: { highThresholdPercent: 1, lowThresholdPercent: 0, maxStorageBytes: 1000, pinnedImages: [] }, log: createLogger('silent'), isBusy: () => false });
    await evictor.collect();
    expect(metadata.storedBytes()).toBe(0);
    expect(sum()).toBe(0);
    // Drift (a database edited by hand) is put right by start-up reconciliation.
    db.prepare('UPDATE store_usage SET bytes = 12345').run();
    metadata.insertBlob(digestOf(5), 700, null);
    expect(metadata.reconcileUsage()).toBe(-12345);
    expect(metadata.storedBytes()).toBe(700);
  });

  it('starts the running total from the rows a store had before the migration', async () => {
    const file = join(await tempDir('rc-usage-migrate-'), 'db');
    const old = new Database(file);
    for (const [i, m] of MIGRATIONS.slice(0, 2).entries()) {
      old.exec(m.sql);
      old.pragma(`user_version = ${i + 1}`);
    }
    old.prepare('INSERT INTO blobs (digest, size, created_at, last_access) VALUES (?, ?, 0, 0), (?, ?, 0, 0)').run(digestOf(1), 111, digestOf(2), 222);
    old.close();
    const metadata = new Metadata(openDatabase(file));
    cleanup.push(async () => metadata.close());
    expect(metadata.storedBytes()).toBe(333);
  });

  it('measures usage after a download only once the store can have reached the high threshold', async () => {
    const images: Record<string, FakeImage> = {};
    for (let i = 0; i < 4; i++) images[`app/i${i}`] = makeImage([2000, 3000, 4000]);
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    for (const [repo, image] of Object.entries(images)) upstream.push(repo, 'v1', image);
    // High mark at 40 % of 100 kB: the 36 kB these images hold stay below it, so one measurement suffices.
    const cache = await startCache({ [upstream.host]: upstream.url }, { maxStorageBytes: 100_000, imageGCHighThresholdPercent: 40, imageGCLowThresholdPercent: 30, gcInterval: '1h' });
    cleanup.push(() => cache.stop());
    const usage = vi.spyOn(cache.services.evictor, 'usage');
    const pull = async (repo: string, image: FakeImage): Promise<void> => {
      expect((await call(`${cache.url}/v2/${repo}/manifests/v1?ns=${upstream.host}`)).status).toBe(200);
      for (const b of image.blobs) expect(sha256((await call(`${cache.url}/v2/${repo}/blobs/${b.digest}?ns=${upstream.host}`)).body)).toBe(b.digest);
      await cache.services.blobs.settle();
      await new Promise((r) => setImmediate(r));
      await cache.services.evictor.idle();
    };
    for (const repo of ['app/i0', 'app/i1', 'app/i2']) await pull(repo, images[repo] as FakeImage);
    // 12 downloads, one measurement (the first: nothing was known yet).
    expect(usage).toHaveBeenCalledTimes(1);
    // Past the mark: the next download is measured, and evicts.
    const big = makeImage([20_000]);
    upstream.push('app/big', 'v1', big);
    await pull('app/big', big);
    expect(usage.mock.calls.length).toBeGreaterThan(1);
    expect(cache.services.metadata.storedBytes()).toBeLessThanOrEqual(30_000);
  });

  it('names only the images a collection evicts, as they were named before their rows went', async () => {
    const dir = await tempDir('rc-gc-names-');
    const store = new BlobStore(dir);
    const metadata = new Metadata(openDatabase(join(dir, 'db')));
    cleanup.push(async () => metadata.close());
    for (let i = 0; i < 20; i++) {
      const child = digestOf(1_000 + i);
      metadata.insertBlob(child, 100, null);
      metadata.insertManifest({ digest: digestOf(i + 1), size: 50, mediaType: OCI_MANIFEST }, [{ child, kind: 'blob' }], { registry: 'reg.test', repository: `app${i}` });
      if (i % 2 === 0) metadata.putTag('reg.test', `app${i}`, 'v1', digestOf(i + 1));
      // Distinct last uses, oldest first: app0 and app1 go first.
      metadata.touch(digestOf(i + 1));
      metadata.touch(child);
      metadata.flushTouches();
      await new Promise((resolve) => setImmediate(resolve));
    }
    const names = vi.spyOn(metadata, 'imageNames');
    // 20 images of 150 bytes; a bound of 3,000 at 100 % → 90 %: two images go.
    const evictor = new Evictor({ store, metadata, settings: { highThresholdPercent: 100, lowThresholdPercent: 90, maxStorageBytes: 3_000, pinnedImages: [] }, log: createLogger('silent'), isBusy: () => false });
    const result = await evictor.collect({ names: true });
    expect(result.evicted.map((e) => e.names)).toEqual([['reg.test/app0:v1'], ['reg.test/app1']]);
    expect(names).toHaveBeenCalledTimes(2);
    expect(metadata.imageNames(digestOf(1))).toEqual([]);
    expect((await evictor.collect({ dryRun: true })).evicted.every((e) => e.names === undefined)).toBe(true);
  });

  it('builds the eviction list in pages, letting the event loop run between them', async () => {
    const dir = await tempDir('rc-units-');
    // The connection itself, to write 5,500 rows in one transaction rather than one each.
    const db = openDatabase(join(dir, 'db'));
    const metadata = new Metadata(db);
    cleanup.push(async () => metadata.close());
    db.transaction(() => {
      for (let i = 0; i < 500; i++) {
        const children = Array.from({ length: 10 }, (_, j) => digestOf(1_000_000 + i * 10 + j));
        for (const c of children) metadata.insertBlob(c, 100, null);
        metadata.insertManifest({ digest: digestOf(i + 1), size: 50, mediaType: OCI_MANIFEST }, children.map((child) => ({ child, kind: 'blob' as const })), { registry: 'r', repository: `a${i}` });
      }
    })();
    const evictor = new Evictor({ store: new BlobStore(dir), metadata, settings: { highThresholdPercent: 85, lowThresholdPercent: 80, maxStorageBytes: undefined, pinnedImages: [] }, log: createLogger('silent'), isBusy: () => false });
    let immediate = false;
    setImmediate(() => (immediate = true));
    const listing = evictor.units();
    expect(immediate).toBe(false);
    const units = await listing;
    expect(immediate).toBe(true);
    expect(units).toHaveLength(500);
    expect(units.every((u) => u.members.length === 11)).toBe(true);
  });

  it('journals statements in memory, and gives a connection the page cache it asks for', async () => {
    const dir = await tempDir('rc-pragmas-');
    const plain = openDatabase(join(dir, 'db'));
    // temp_store 2 = MEMORY: a blob row's cascading delete journalled each page it changed with a write() to a file.
    expect(plain.pragma('temp_store', { simple: true })).toBe(2);
    // better-sqlite3's build default: 16,000 KiB.
    expect(plain.pragma('cache_size', { simple: true })).toBe(-16_000);
    plain.close();
    const large = openDatabase(join(dir, 'db'), { cacheBytes: 64 * 1024 * 1024 });
    expect(large.pragma('cache_size', { simple: true })).toBe(-65_536);
    large.close();
  });

  it("gives the running server's connection an 8 MiB page cache, not SQLite's 16 MB default", async () => {
    const upstream = await new FakeUpstream().start();
    const cache = await startCache({ [upstream.host]: upstream.url });
    try {
      // The connection the server's queries run on (private to Metadata: nothing else needs it).
      const { db } = cache.services.metadata as unknown as { db: Database.Database };
      expect(db.pragma('cache_size', { simple: true })).toBe(-8_192);
    } finally {
      await cache.stop();
      await upstream.stop();
    }
  });

  it('gc deletes every evicted image in one transaction, timing its pass; a server deletes in batches between turns', async () => {
    const dir = await tempDir('rc-gc-one-');
    const storage = join(dir, 'store');
    const store = new BlobStore(storage);
    await store.ensureDirectories();
    const db = openDatabase(store.layout.databaseFile);
    const metadata = new Metadata(db);
    // 250 images of a manifest and a layer, each with its files; a bound of all their bytes at 100 % → 0 %: all go.
    db.transaction(() => {
      for (let i = 0; i < 250; i++) {
        const child = digestOf(1_000 + i);
        metadata.insertBlob(child, 100, null);
        metadata.insertManifest({ digest: digestOf(i + 1), size: 50, mediaType: OCI_MANIFEST }, [{ child, kind: 'blob' }], { registry: 'reg.test', repository: `app${i}` });
      }
    })();
    for (let i = 0; i < 250; i++) {
      for (const d of [digestOf(i + 1), digestOf(1_000 + i)]) {
        await mkdir(dirname(store.pathFor(d)), { recursive: true });
        await writeFile(store.pathFor(d), 'x');
      }
    }
    metadata.close();
    const deletes = vi.spyOn(Metadata.prototype, 'deleteContent');
    const settings = { highThresholdPercent: 1, lowThresholdPercent: 0, maxStorageBytes: 250 * 150, pinnedImages: [] };
    // A server's evictor: 20 images' rows per transaction, each a short stretch of the event loop.
    const copy = join(dir, 'copy.db');
    await writeFile(copy, await readFile(store.layout.databaseFile));
    const serverMetadata = new Metadata(openDatabase(copy));
    cleanup.push(async () => serverMetadata.close());
    const server = new Evictor({ store: new BlobStore(join(dir, 'other')), metadata: serverMetadata, settings, log: createLogger('silent'), isBusy: () => false });
    expect((await server.collect()).evicted).toHaveLength(250);
    expect(deletes.mock.calls.map((c) => c[0].length)).toEqual([...Array<number>(12).fill(40), 20]);
    deletes.mockClear();

    const configFile = join(dir, 'config.yaml');
    await writeFile(configFile, `storage: ${storage}\nregistries:\n  "reg.test": { url: "http://127.0.0.1:9" }\ndefaultRegistry: reg.test\nmaxStorageBytes: ${250 * 150}\nimageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\n`);
    const out: string[] = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => out.push(String(chunk)) > 0);
    const { runGc } = await import('../../src/commands.js');
    const { loadConfig } = await import('../../src/config/load.js');
    await runGc(loadConfig({ file: configFile }), false);
    vi.mocked(process.stdout.write).mockRestore();
    expect(deletes.mock.calls.map((c) => c[0].length)).toEqual([500]);
    expect(out.at(-1)).toMatch(/; evicted 250 images, 37500 bytes; 0 pinned kept; pass \d+\.\d{3} s\n$/);
    for (let i = 0; i < 250; i++) expect(await store.size(digestOf(i + 1))).toBeUndefined();
    // A dry run may run next to a live server, in its pod's memory: a reader with the default page cache.
    const { gcOpenOptions } = await import('../../src/commands.js');
    expect(gcOpenOptions(true)).toEqual({ readOnly: true });
    expect(gcOpenOptions(false)).toEqual({ exclusive: true, cacheBytes: 256 * 1024 * 1024 });
  });

  it('records prints every record of a large store once, in order, across its chunked writes', async () => {
    const dir = await tempDir('rc-records-many-');
    const storage = join(dir, 'store');
    await mkdir(storage);
    const { openMetadata } = await import('../../src/db/open.js');
    const { index, records } = openMetadata(join(storage, 'registry-cache.db'));
    // 2,345 records: more than two writes' worth, and a partial last one.
    const digests = Array.from({ length: 2_345 }, (_, i) => digestOf(i + 1));
    for (const [i, d] of digests.entries()) {
      index.insertBlob(d, 10, null);
      records.recordSuccess('reg.test', `team/app-${i % 7}`, d, { kind: 'nodePodsAccessible' });
    }
    index.close();
    const configFile = join(dir, 'config.yaml');
    await writeFile(configFile, `storage: ${storage}\nregistries:\n  "reg.test": { url: "http://127.0.0.1:9" }\ndefaultRegistry: reg.test\n`);
    const out = await runCli(['records', '--config', configFile]);
    expect(out.code).toBe(0);
    const lines = out.stdout.split('\n');
    expect(lines.at(-1)).toBe('');
    expect(lines[0]).toMatch(/^IMAGE +DIGEST +PULLED BY +PRELOADED +LAST VERIFIED$/);
    const rows = lines.slice(1, -1).map((l) => l.split(/ {2,}/));
    expect(rows).toHaveLength(digests.length);
    const expected = digests.map((d, i) => [`reg.test/team/app-${i % 7}`, d.slice(0, 19)]).sort((a, b) => (`${a[0]} ${a[1]}` < `${b[0]} ${b[1]}` ? -1 : 1));
    expect(rows.map((r) => [r[0], r[1]])).toEqual(expected);
    expect(new Set(rows.map((r) => r[2]))).toEqual(new Set(['nodePodsAccessible']));
  });

  it('records lays out credential, node and unverified records in aligned columns, verification times in UTC', async () => {
    const dir = await tempDir('rc-records-table-');
    const storage = join(dir, 'store');
    await mkdir(storage);
    const { openMetadata } = await import('../../src/db/open.js');
    const { index } = openMetadata(join(storage, 'registry-cache.db'));
    const db = (index as unknown as { db: Database.Database }).db;
    for (const i of [1, 2, 3, 4]) index.insertBlob(digestOf(i), 10, null);
    const record = db.prepare(
      'INSERT INTO pull_records (registry, repository, blob, node_pods_accessible, created_at, last_verified) VALUES (?, ?, (SELECT id FROM blobs WHERE digest = ?), ?, 0, ?)',
    );
    const credential = db.prepare(
      "INSERT INTO pull_record_credentials (registry, repository, blob, credential_hash, verified_at) VALUES ('reg.test', ?, (SELECT id FROM blobs WHERE digest = ?), ?, 0)",
    );
    record.run('reg.test', 'a', digestOf(1), 0, Date.UTC(2026, 0, 2, 3, 4, 5));
    credential.run('a', digestOf(1), 'a'.repeat(64));
    credential.run('a', digestOf(1), 'b'.repeat(64));
    record.run('reg.test', 'a', digestOf(2), 0, null);
    credential.run('a', digestOf(2), 'c'.repeat(64));
    record.run('reg.test', 'long/name', digestOf(3), 1, null);
    record.run('reg.test', 'long/name', digestOf(4), 0, null);
    index.close();
    const configFile = join(dir, 'config.yaml');
    await writeFile(configFile, `storage: ${storage}\nregistries:\n  "reg.test": { url: "http://127.0.0.1:9" }\ndefaultRegistry: reg.test\n`);
    const out = await runCli(['records', '--config', configFile]);
    expect(out.stdout).toBe(
      [
        'IMAGE               DIGEST               PULLED BY                            PRELOADED  LAST VERIFIED',
        `reg.test/a          ${digestOf(1).slice(0, 19)}  2 credentials (aaaaaaaa, bbbbbbbb…)  no         2026-01-02T03:04:05.000Z`,
        `reg.test/a          ${digestOf(2).slice(0, 19)}  1 credential (cccccccc…)             no         -`,
        `reg.test/long/name  ${digestOf(3).slice(0, 19)}  nodePodsAccessible                   no         -`,
        `reg.test/long/name  ${digestOf(4).slice(0, 19)}  nobody (verify next time)            no         -`,
        '',
      ].join('\n'),
    );
  });

  it('records, verify and gc --dry-run open a crashed store as is: no recovery, no lock', async () => {
    const image = makeImage([4096]);
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    upstream.push('app', 'v1', image);
    const dir = await tempDir('rc-readonly-');
    const storage = join(dir, 'store');
    const cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerifyPreloadedImages' }, storage);
    expect((await call(`${cache.url}/v2/app/manifests/v1?ns=${upstream.host}`)).status).toBe(200);
    await cache.stop({ keepStorage: true });
    // What a crash leaves: no clean-shutdown mark, a partial download, a committed file without its row.
    await unlink(join(storage, CLEAN_SHUTDOWN_FILE));
    await writeFile(join(storage, 'tmp', 'partial'), 'half');
    const stray = cache.services.store.pathFor(`sha256:${'cd'.repeat(32)}`);
    await mkdir(dirname(stray), { recursive: true });
    await writeFile(stray, 'no row');
    const config = join(dir, 'config.yaml');
    await writeFile(config, `storage: ${storage}\nregistries:\n  "${upstream.host}": { url: "${upstream.url}" }\ndefaultRegistry: "${upstream.host}"\n`);
    for (const args of [['records'], ['verify'], ['gc', '--dry-run']]) {
      const r = await runCli([...args, '--config', config]);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      expect(await readdir(join(storage, 'tmp'))).toEqual(['partial']);
      expect(await readFile(stray, 'utf8')).toBe('no row');
      expect(await readdir(storage)).not.toContain(LOCK_FILE);
      // Nor does a read-only command vouch for the store: the next server still recovers it.
      expect(await readdir(storage)).not.toContain(CLEAN_SHUTDOWN_FILE);
    }
    const restarted = await startCache({ [upstream.host]: upstream.url }, {}, storage);
    cleanup.push(() => restarted.stop());
    expect(restarted.logs.find((l) => l.includes('store reconciled'))).toMatch(/"removedTempFiles":1,"droppedRows":0,"strayFiles":1/);
  });

  it.each([
    { where: 'in this thread', threads: 0 },
    { where: 'on 2 worker threads', threads: 2 },
  ])('verify $where reports missing files and small files that grew, shrank or changed, with their real size; streams large files; repairs', async ({ threads }) => {
    const dir = await tempDir('rc-verify-sizes-');
    const store = new BlobStore(dir);
    await store.ensureDirectories();
    const metadata = new Metadata(openDatabase(join(dir, 'db')));
    cleanup.push(async () => metadata.close());
    const { verifyStore } = await import('../../src/lifecycle/integrity.js');
    const smallFiles = await import('../../src/lifecycle/small-files.js');
    const inThisThread = vi.spyOn(smallFiles, 'hashSmallFiles');
    const put = async (bytes: Buffer, onDisk: Buffer | null = bytes): Promise<string> => {
      const digest = sha256(bytes);
      await mkdir(dirname(store.pathFor(digest)), { recursive: true });
      if (onDisk) await writeFile(store.pathFor(digest), onDisk);
      metadata.insertBlob(digest, bytes.length, null);
      return digest;
    };
    const good = await put(Buffer.alloc(3000, 1));
    const large = await put(Buffer.alloc(600_000, 2));
    const grown = await put(Buffer.alloc(2000, 3), Buffer.alloc(2500, 3));
    const shrunk = await put(Buffer.alloc(2000, 4), Buffer.alloc(1500, 4));
    const flipped = await put(Buffer.alloc(2000, 5), Buffer.alloc(2000, 6));
    const missing = await put(Buffer.alloc(1000, 7), null);
    const many = await Promise.all(Array.from({ length: 300 }, (_, i) => put(Buffer.from(`small file ${i}`))));
    const report = await verifyStore({ store, metadata }, false, { threads });
    expect(report.checked).toBe(6 + many.length);
    expect(report.bytes).toBe(3000 + 600_000 + 2500 + 1500 + 2000 + many.reduce((n, _, i) => n + `small file ${i}`.length, 0));
    // In the order the rows were stored, whichever thread hashed them.
    expect(report.problems).toEqual([
      { digest: grown, problem: 'size', detail: '2500 bytes on disk, 2000 recorded' },
      { digest: shrunk, problem: 'size', detail: '1500 bytes on disk, 2000 recorded' },
      { digest: flipped, problem: 'digest', detail: `content hashes to ${sha256(Buffer.alloc(2000, 6))}` },
      { digest: missing, problem: 'missing', detail: 'file is missing' },
    ]);
    expect(inThisThread.mock.calls.length > 0).toBe(threads === 0);

    const repaired = await verifyStore({ store, metadata }, true, { threads });
    expect(repaired.repaired).toBe(4);
    for (const d of [grown, shrunk, flipped, missing]) expect(metadata.getBlob(d)).toBeUndefined();
    for (const d of [good, large, ...many]) expect(metadata.getBlob(d)).toBeDefined();
    const after = await verifyStore({ store, metadata }, false, { threads });
    expect(after).toMatchObject({ checked: 2 + many.length, problems: [] });
  });
});
