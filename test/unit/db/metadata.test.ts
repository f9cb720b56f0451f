import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { openDatabase } from '../../../src/db/database.js';
import { Metadata } from '../../../src/db/content-index.js';
import { Evictor } from '../../../src/lifecycle/eviction.js';
import { createLogger } from '../../../src/log.js';
import { BlobStore } from '../../../src/store/blob-store.js';

describe('metadata access times', () => {
  const dirs: string[] = [];
  afterEach(() => {
    vi.restoreAllMocks();
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('stamps a batched touch with the time of the access, not the time of the flush', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rc-meta-'));
    dirs.push(dir);
    const metadata = new Metadata(openDatabase(join(dir, 'db.sqlite')));
    // What reads the access times: eviction's least-recently-used order.
    const evictor = new Evictor({
      store: new BlobStore(join(dir, 'store')),
      metadata,
      settings: { highThresholdPercent: 85, lowThresholdPercent: 80, maxStorageBytes: 1_000_000, pinnedImages: [] },
      log: createLogger('silent'),
      isBusy: () => false,
    });
    const touched = 'sha256:' + 'a'.repeat(64);
    const later = 'sha256:' + 'b'.repeat(64);
    let now = 1_000;
    vi.spyOn(Date, 'now').mockImplementation(() => now);
    metadata.insertBlob(touched, 1, null);
    now = 2_000;
    metadata.touch(touched);
    // Another image is stored after the access and before the flush: LRU order must put the touched one first.
    now = 3_000;
    metadata.insertBlob(later, 1, null);
    now = 4_000;
    metadata.flushTouches();
    const units = await evictor.units();
    expect(units.map((u) => ({ root: u.root, lastAccess: u.lastAccess }))).toEqual([
      { root: touched, lastAccess: 2_000 },
      { root: later, lastAccess: 3_000 },
    ]);
    metadata.close();
  });
});

describe('stored manifest rows remembered by the store\'s sole deleter', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const manifest = (n: number): { digest: string; size: number; mediaType: string } => ({
    digest: `sha256:${n.toString(16).padStart(64, '0')}`,
    size: 10 + n,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
  });

  it('serves a row it read from memory until this connection deletes it, by any delete; storing asks the database', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rc-rows-'));
    dirs.push(dir);
    const file = join(dir, 'db.sqlite');
    const holder = new Metadata(openDatabase(file), { soleDeleter: true });
    const other = new Metadata(openDatabase(file));
    const via = { registry: 'r.io', repository: 'team/app' };
    for (const n of [1, 2, 3]) holder.insertManifest(manifest(n), [], via);
    for (const n of [1, 2, 3]) expect(holder.storedManifest(manifest(n).digest)).toEqual(manifest(n));
    // Served from memory: a row another connection deleted behind the lock's back is still answered (the lock
    // forbids that delete; it shows here that no SELECT was made).
    const select = vi.spyOn((holder as unknown as { stmt: { getManifest: { get: () => unknown } } }).stmt.getManifest, 'get');
    other.deleteBlob(manifest(1).digest);
    expect(holder.storedManifest(manifest(1).digest)).toEqual(manifest(1));
    expect(select).not.toHaveBeenCalled();
    // What decides whether to store a manifest asks the database, and the memory follows its answer.
    expect(holder.getManifest(manifest(1).digest)).toBeUndefined();
    expect(holder.storedManifest(manifest(1).digest)).toBeUndefined();
    expect(select).toHaveBeenCalledTimes(2);
    // Each delete of this connection forgets what it deleted: eviction, verify --repair's and healing's, recovery's.
    holder.insertManifest(manifest(1), [], via);
    expect(holder.storedManifest(manifest(1).digest)).toEqual(manifest(1));
    holder.deleteContent([manifest(1).digest]);
    holder.deleteBlob(manifest(2).digest);
    holder.deleteBlobs([manifest(3).digest]);
    select.mockClear();
    for (const n of [1, 2, 3]) expect(holder.storedManifest(manifest(n).digest)).toBeUndefined();
    expect(select).toHaveBeenCalledTimes(3);
    holder.insertManifest(manifest(2), [], via);
    expect(holder.storedManifest(manifest(2).digest)).toEqual(manifest(2));
    // Closed: nothing from memory (the database's own error).
    holder.close();
    expect(() => holder.storedManifest(manifest(2).digest)).toThrow();
    other.close();
  });

  it('remembers nothing for a connection that is not the sole deleter: a row another process deletes is gone', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rc-rows-'));
    dirs.push(dir);
    const file = join(dir, 'db.sqlite');
    const reader = new Metadata(openDatabase(file));
    const holder = new Metadata(openDatabase(file), { soleDeleter: true });
    holder.insertManifest(manifest(1), [], { registry: 'r.io', repository: 'team/app' });
    expect(reader.getManifest(manifest(1).digest)).toEqual(manifest(1));
    holder.deleteContent([manifest(1).digest]);
    expect(reader.getManifest(manifest(1).digest)).toBeUndefined();
    reader.close();
    holder.close();
  });
});
