import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { openDatabase } from '../../src/db/database.js';
import { Metadata } from '../../src/db/content-index.js';

describe('metadata access times', () => {
  const dirs: string[] = [];
  afterEach(() => {
    vi.restoreAllMocks();
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('stamps a batched touch with the time of the access, not the time of the flush', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rc-meta-'));
    dirs.push(dir);
    const db = openDatabase(join(dir, 'db.sqlite'));
    const metadata = new Metadata(db);
    let now = 1_000;
    vi.spyOn(Date, 'now').mockImplementation(() => now);
    metadata.insertBlob('sha256:' + 'a'.repeat(64), 1, null);
    now = 2_000;
    metadata.touch('sha256:' + 'a'.repeat(64));
    // Another image is stored after the access and before the flush: LRU order must put the touched one first.
    now = 3_000;
    metadata.insertBlob('sha256:' + 'b'.repeat(64), 1, null);
    now = 4_000;
    metadata.flushTouches();
    const rows = db.prepare('SELECT digest, last_access FROM blobs ORDER BY digest').all() as { digest: string; last_access: number }[];
    expect(rows.map((r) => r.last_access)).toEqual([2_000, 3_000]);
    db.close();
  });
});
