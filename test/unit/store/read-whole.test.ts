import { randomBytes } from 'node:crypto';
import { open, openSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { BlobStore } from '../../../src/store/blob-store.js';
import { sha256 } from '../../support/fake-upstream.js';

// The store's own module sees these spies: which way it opened a file is which way it read it.
vi.mock('node:fs', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:fs')>();
  return { ...actual, open: vi.fn(actual.open), openSync: vi.fn(actual.openSync) };
});

describe('BlobStore.readWhole: small files on the event loop, larger ones on the thread pool', () => {
  let dir: string;
  let store: BlobStore;
  const files = [16 * 1024, 16 * 1024 + 1].map((size) => {
    const bytes = randomBytes(size);
    return { size, bytes, digest: sha256(bytes) };
  });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rc-read-whole-'));
    store = new BlobStore(dir);
    await store.ensureDirectories();
    for (const f of files) await store.writeSmall(f.digest, f.bytes);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    vi.mocked(open).mockClear();
    vi.mocked(openSync).mockClear();
  });

  it.each([
    { size: 16 * 1024, way: 'synchronously (openSync)', sync: true },
    { size: 16 * 1024 + 1, way: 'on the thread pool (open)', sync: false },
  ])('reads a $size-byte file $way, whole and verified', async ({ size, sync }) => {
    const f = files.find((x) => x.size === size);
    if (!f) throw new Error('no such file');
    const path = store.pathFor(f.digest);
    const read = await store.readWhole(f.digest, f.size);
    expect(read.equals(f.bytes)).toBe(true);
    const opened = { sync: vi.mocked(openSync).mock.calls.some(([p]) => p === path), pool: vi.mocked(open).mock.calls.some(([p]) => p === path) };
    expect(opened).toEqual({ sync, pool: !sync });
  });
});
