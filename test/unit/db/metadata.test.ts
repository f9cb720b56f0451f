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
