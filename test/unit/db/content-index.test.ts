import { afterEach, describe, expect, it, vi } from 'vitest';
import { digest, memoryDatabases, OCI_MANIFEST } from './memory-database.js';

describe('content index (db/content-index.ts) against an in-memory database', () => {
  const open = memoryDatabases();
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('stores a blob once: a second insert of the same digest keeps the first row and the total', () => {
    const { index } = open();
    index.insertBlob(digest(1), 10, 'application/octet-stream');
    index.insertBlob(digest(1), 99, null);
    expect(index.getBlob(digest(1))).toEqual({ digest: digest(1), size: 10, mediaType: 'application/octet-stream', nodeOpen: false });
    expect(index.getBlob(digest(2))).toBeUndefined();
    expect(index.storedBytes()).toBe(10);
    expect(index.allBlobDigests()).toEqual([digest(1)]);
  });

  it('marks a blob node-open once fetched without a tenant credential, and never takes that back', () => {
    const { index } = open();
    index.insertBlob(digest(1), 10, null, false);
    expect(index.getBlob(digest(1))?.nodeOpen).toBe(false);
    index.insertBlob(digest(1), 10, null, true);
    expect(index.getBlob(digest(1))).toEqual({ digest: digest(1), size: 10, mediaType: null, nodeOpen: true });
    index.insertBlob(digest(1), 10, null, false);
    expect(index.getBlob(digest(1))?.nodeOpen).toBe(true);
    expect(index.storedBytes()).toBe(10);
  });

  it('records a manifest with its references and the repository it came through, and finds its parents there', () => {
    const { index } = open();
    index.insertBlob(digest(1), 5, null);
    index.insertManifest({ digest: digest(2), size: 7, mediaType: OCI_MANIFEST }, [{ child: digest(1), kind: 'blob' }], { registry: 'r.io', repository: 'team/app' });
    expect(index.getManifest(digest(2))).toEqual({ digest: digest(2), size: 7, mediaType: OCI_MANIFEST });
    expect(index.getManifest(digest(1))).toBeUndefined();
    expect(index.manifestRefs(digest(2))).toEqual([{ child: digest(1), kind: 'blob' }]);
    expect(index.isLinked('r.io', 'team/app', digest(2))).toBe(true);
    expect(index.isLinked('r.io', 'other', digest(2))).toBe(false);
    expect(index.parentsInRepository('r.io', 'team/app', digest(1))).toEqual([digest(2)]);
    expect(index.parentsInRepository('r.io', 'other', digest(1))).toEqual([]);
    expect(index.storedBytes()).toBe(12);
  });

  it('registers an imported manifest (already a blob row) with its references, without a repository link', () => {
    const { index } = open();
    index.insertBlob(digest(1), 5, null);
    index.insertBlob(digest(2), 7, OCI_MANIFEST);
    index.registerManifest(digest(2), OCI_MANIFEST, [{ child: digest(1), kind: 'blob' }]);
    index.registerManifest(digest(2), OCI_MANIFEST, [{ child: digest(1), kind: 'blob' }]);
    expect(index.getManifest(digest(2))?.mediaType).toBe(OCI_MANIFEST);
    expect(index.manifestRefs(digest(2))).toEqual([{ child: digest(1), kind: 'blob' }]);
    expect(index.isLinked('r.io', 'team/app', digest(2))).toBe(false);
  });

  it('keeps a tag’s last digest and when it was confirmed, and names images by tag before repository', () => {
    const { index } = open();
    index.insertManifest({ digest: digest(2), size: 7, mediaType: OCI_MANIFEST }, [], { registry: 'r.io', repository: 'team/app' });
    expect(index.imageNames(digest(2))).toEqual(['r.io/team/app']);
    index.putTag('r.io', 'team/app', 'v1', digest(2), 1_000);
    expect(index.getTag('r.io', 'team/app', 'v1')).toEqual({ digest: digest(2), fetchedAt: 1_000 });
    index.putTag('r.io', 'team/app', 'v1', digest(3), 2_000);
    expect(index.getTag('r.io', 'team/app', 'v1')).toEqual({ digest: digest(3), fetchedAt: 2_000 });
    index.putTag('r.io', 'team/app', 'v2', digest(2), 3_000);
    expect(index.imageNames(digest(2))).toEqual(['r.io/team/app:v2']);
    expect(index.getTag('r.io', 'team/app', 'v3')).toBeUndefined();
  });

  it('writes batched touches with the time of each access, never moving an access time back', () => {
    const { index } = open();
    let now = 1_000;
    vi.spyOn(Date, 'now').mockImplementation(() => now);
    index.insertBlob(digest(1), 1, null);
    index.insertBlob(digest(2), 1, null);
    now = 5_000;
    index.touch(digest(1));
    now = 9_000;
    index.flushTouches();
    const lastAccess = new Map(index.blobPage(0, 10).map((r) => [r.digest, r.last_access]));
    expect(lastAccess).toEqual(new Map([[digest(1), 5_000], [digest(2), 1_000]]));
  });

  it('writes many pending access times in transactions of 250, letting the event loop run between them', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      const { index } = open();
      for (let i = 1; i <= 600; i++) index.insertBlob(digest(i), 1, null);
      vi.spyOn(Date, 'now').mockReturnValue(9_000_000_000_000);
      for (let i = 1; i <= 600; i++) index.touch(digest(i));
      const written = (): number => index.blobPage(0, 1_000).filter((r) => r.last_access === 9_000_000_000_000).length;
      expect(written()).toBe(0);
      // The periodic flush: one transaction now, the next after other callbacks had their turn.
      vi.advanceTimersByTime(5_000);
      const seen = [written()];
      for (let turn = 0; turn < 3; turn++) {
        await new Promise((resolve) => setImmediate(resolve));
        seen.push(written());
      }
      expect(seen).toEqual([250, 500, 600, 600]);
    } finally {
      vi.useRealTimers();
    }
  });

  it('pages blobs by rowid, references by (manifest rowid, child) and manifests by rowid, each page after the last one read', () => {
    const { index } = open();
    for (let i = 1; i <= 5; i++) index.insertBlob(digest(i), i, null);
    index.insertManifest({ digest: digest(10), size: 1, mediaType: OCI_MANIFEST }, [1, 2, 3].map((i) => ({ child: digest(i), kind: 'blob' as const })), { registry: 'r', repository: 'a' });
    index.insertManifest({ digest: digest(11), size: 1, mediaType: OCI_MANIFEST }, [{ child: digest(4), kind: 'blob' }], { registry: 'r', repository: 'a' });
    const first = index.blobPage(0, 3);
    expect(first.map((r) => r.digest)).toEqual([digest(1), digest(2), digest(3)]);
    expect(first.map((r) => r.size)).toEqual([1, 2, 3]);
    const rest = index.blobPage(first[2]?.rowid ?? 0, 10);
    expect(rest.map((r) => r.digest)).toEqual([digest(4), digest(5), digest(10), digest(11)]);
    expect(index.blobTuples(first[2]?.rowid ?? 0, 10)).toEqual(rest.map((r) => [r.rowid, r.digest, r.last_access, r.size]));
    const rowid = new Map(index.blobPage(0, 10).map((r) => [r.digest, r.rowid]));
    const m10 = rowid.get(digest(10)) ?? -1;
    const m11 = rowid.get(digest(11)) ?? -1;
    const refs = index.refPage([0, ''], 2);
    expect(refs).toEqual([[m10, digest(1)], [m10, digest(2)]]);
    expect(index.refPage(refs[1] ?? [0, ''], 10)).toEqual([[m10, digest(3)], [m11, digest(4)]]);
    expect(index.manifestPage(0, 1)).toEqual([m10]);
    expect(index.manifestPage(m10, 5)).toEqual([m11]);
  });

  it('evicts content with its tags, repository links, manifest rows, references and pull records in one go', () => {
    const { index, records } = open();
    index.insertBlob(digest(1), 5, null);
    index.insertManifest({ digest: digest(2), size: 7, mediaType: OCI_MANIFEST }, [{ child: digest(1), kind: 'blob' }], { registry: 'r.io', repository: 'team/app' });
    index.putTag('r.io', 'team/app', 'v1', digest(2));
    records.recordSuccess('r.io', 'team/app', digest(2), { kind: 'credential', hash: 'h1' });
    index.deleteContent([digest(2), digest(1)]);
    expect(index.getBlob(digest(2))).toBeUndefined();
    expect(index.getManifest(digest(2))).toBeUndefined();
    expect(index.manifestRefs(digest(2))).toEqual([]);
    expect(index.getTag('r.io', 'team/app', 'v1')).toBeUndefined();
    expect(index.isLinked('r.io', 'team/app', digest(2))).toBe(false);
    expect(records.get('r.io', 'team/app', digest(2))).toBeUndefined();
    expect(index.storedBytes()).toBe(0);
  });

  it('keeps the usage total with the rows through deletes, and reconciliation reports no drift when they agree', () => {
    const { index } = open();
    for (let i = 1; i <= 3; i++) index.insertBlob(digest(i), 100 * i, null);
    index.deleteBlob(digest(1));
    expect(index.storedBytes()).toBe(500);
    index.deleteBlobs([digest(2), digest(9)]);
    expect(index.storedBytes()).toBe(300);
    expect(index.allBlobDigests()).toEqual([digest(3)]);
    expect(index.reconcileUsage()).toBe(0);
    expect(index.storedBytes()).toBe(300);
  });

  it('answers the readiness ping while open and throws once closed', () => {
    const { index } = open();
    expect(() => index.ping()).not.toThrow();
    index.close();
    expect(() => index.ping()).toThrow();
  });

  it('lists the most recently used images newest first: top-level manifests only, with their stored size, names and completeness', () => {
    const { index } = open();
    const now = vi.spyOn(Date, 'now');
    // An image (manifest 3 → blobs 1, 2) and an index (manifest 6 → manifest 5 → blob 4, and a missing manifest 7).
    now.mockReturnValue(1_000);
    index.insertBlob(digest(1), 10, null);
    index.insertBlob(digest(2), 20, null);
    index.insertManifest({ digest: digest(3), size: 3, mediaType: OCI_MANIFEST }, [{ child: digest(1), kind: 'blob' }, { child: digest(2), kind: 'blob' }], { registry: 'r.io', repository: 'team/app' });
    index.putTag('r.io', 'team/app', 'v1', digest(3));
    now.mockReturnValue(2_000);
    index.insertBlob(digest(4), 40, null);
    index.insertManifest({ digest: digest(5), size: 5, mediaType: OCI_MANIFEST }, [{ child: digest(4), kind: 'blob' }], { registry: 'r.io', repository: 'team/multi' });
    index.insertManifest({ digest: digest(6), size: 6, mediaType: OCI_MANIFEST }, [{ child: digest(5), kind: 'manifest' }, { child: digest(7), kind: 'manifest' }], { registry: 'r.io', repository: 'team/multi' });
    expect(index.recentImages(10)).toEqual([
      { digest: digest(6), names: [{ registry: 'r.io', repository: 'team/multi', tag: undefined }], storedBytes: 51, complete: false, lastAccess: 2_000 },
      { digest: digest(3), names: [{ registry: 'r.io', repository: 'team/app', tag: 'v1' }], storedBytes: 33, complete: true, lastAccess: 1_000 },
    ]);
    // A pull of the older image (its manifest: every pull fetches one) makes it the most recent; the limit keeps the newest.
    now.mockReturnValue(3_000);
    index.touch(digest(3));
    index.flushTouches();
    expect(index.recentImages(1).map((i) => i.digest)).toEqual([digest(3)]);
  });
});
