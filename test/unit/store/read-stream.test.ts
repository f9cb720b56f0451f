import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, type Readable, Transform, Writable } from 'node:stream';
import { once } from 'node:events';
import { buffer } from 'node:stream/consumers';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobStore } from '../../../src/store/blob-store.js';
import { sha256 } from '../../support/fake-upstream.js';
import { LaggingSink } from '../../support/lagging-sink.js';

describe('reading stored blobs (FileRangeStream)', () => {
  let dir: string;
  let store: BlobStore;
  const bytes = randomBytes(8 * 1024 * 1024 + 12_345);
  const digest = sha256(bytes);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rc-read-'));
    store = new BlobStore(dir);
    await store.ensureDirectories();
    await store.writeSmall(digest, bytes);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('piped, reads into a few reused buffers instead of one per read', async () => {
    // A socket's high-water mark (64 KiB): write() asks to wait for 'drain' after every chunk, as a busy socket does.
    const sink = new LaggingSink(1, 64 * 1024);
    await pipeline(store.openRead(digest), sink);
    expect(Buffer.concat(sink.received).equals(bytes)).toBe(true);
    // 8 MiB in 512 KiB reads: 17 reads, 17 buffers when each read allocates.
    expect(sink.arrays.size).toBeLessThanOrEqual(3);
  });

  it('reads 512 KiB at a time while the read-buffer budget allows, 256 KiB beyond it, and frees budget as reads close', async () => {
    const reads: Readable[] = [];
    const open = (): number => {
      const stream = store.openRead(digest);
      reads.push(stream);
      return stream.readableHighWaterMark;
    };
    try {
      // 32 MiB for reads of 3 buffers of 512 KiB: 21 of them.
      const sizes = Array.from({ length: 23 }, open);
      expect(sizes.slice(0, 21)).toEqual(Array(21).fill(512 * 1024));
      expect(sizes.slice(21)).toEqual([256 * 1024, 256 * 1024]);
      const first = reads[0] as Readable;
      first.destroy();
      await once(first, 'close');
      expect(open()).toBe(512 * 1024);
      expect(open()).toBe(256 * 1024);
    } finally {
      for (const r of reads) r.destroy();
      await Promise.all(reads.map((r) => (r.closed ? undefined : once(r, 'close'))));
    }
  });

  it('never overwrites a chunk before the destination has finished writing it', async () => {
    for (const lag of [1, 4, 16]) {
      const sink = new LaggingSink(lag);
      const stream = store.openRead(digest);
      const closed = new Promise((resolve) => stream.once('close', resolve));
      stream.pipe(sink);
      await new Promise((resolve) => sink.once('finish', resolve));
      await closed;
      expect(sink.overwritten).toBe(0);
      expect(sha256(Buffer.concat(sink.received))).toBe(digest);
    }
  });

  it('piped into a stream that keeps chunks (a Transform, a PassThrough read later), gives it buffers of its own', async () => {
    // A Transform calls back as soon as it has passed a chunk on, while the chunk still waits in its readable side.
    const counted = new Transform({ transform: (chunk: Buffer, _e, cb) => cb(null, chunk) });
    const later = new PassThrough({ highWaterMark: 64 * 1024 * 1024 });
    store.openRead(digest).pipe(counted).pipe(later);
    await new Promise((resolve) => later.once('finish', resolve));
    expect(sha256(await buffer(later))).toBe(digest);
  });

  it('serves inclusive ranges, piped and read directly, and stops at the end of the file', async () => {
    const cases: Array<[number | undefined, number | undefined]> = [
      [0, 0],
      [1, 262_144],
      [5_000_000, undefined],
      [bytes.length - 10, bytes.length + 100],
      [undefined, 300_000],
    ];
    for (const [start, end] of cases) {
      const expected = bytes.subarray(start ?? 0, end === undefined ? undefined : end + 1);
      expect((await buffer(store.openRead(digest, start, end))).equals(expected)).toBe(true);
      const sink = new LaggingSink(1);
      await pipeline(store.openRead(digest, start, end), sink);
      expect(Buffer.concat(sink.received).equals(expected)).toBe(true);
    }
  });

  it('fails with ENOENT for a missing file, read or piped', async () => {
    await expect(buffer(store.openRead(sha256(Buffer.from('absent'))))).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(pipeline(store.openRead(sha256(Buffer.from('absent'))), new LaggingSink(1))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('stops reading and closes the file when the destination goes away mid-body', async () => {
    const stream = store.openRead(digest);
    const closed = new Promise((resolve) => stream.once('close', resolve));
    let written = 0;
    const sink = new Writable({
      highWaterMark: 1,
      write(chunk: Buffer, _encoding, callback) {
        written += chunk.length;
        callback();
        if (written >= 1024 * 1024) this.destroy();
      },
    });
    stream.pipe(sink);
    await closed;
    expect(stream.destroyed).toBe(true);
    expect(written).toBeLessThan(bytes.length);
  });
});
