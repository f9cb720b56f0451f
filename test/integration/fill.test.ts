import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlobFill } from '../../src/cache/fill.js';
import { ExternalMemoryGuard } from '../../src/lifecycle/external-memory.js';
import { BlobStore, type TempFile } from '../../src/store/blob-store.js';
import { sha256 } from '../support/fake-upstream.js';
import { LaggingSink } from '../support/lagging-sink.js';
import { makeTempDir, removeTempDir } from '../support/temp-dir.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** The fill's shared window (fill.ts WINDOW_BYTES) plus a chunk or two of slack: what "flat" means here. */
const WINDOW_BOUND = 4 * MiB + 2 * 64 * KiB;

/** A promise with its resolve, to hold a step until the test lets it go. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((res) => (resolve = res));
  return { promise, resolve };
}

/** A disk store that counts temp-file reads, can hold temp-file writes, and says when a temp file is opened. */
class ObservedStore extends BlobStore {
  fileReads = 0;
  tempOpened = deferred();
  holdWrites: Promise<void> | undefined;

  override async createTemp(): Promise<TempFile> {
    const temp = await super.createTemp();
    this.tempOpened.resolve();
    const handle = new Proxy(temp.handle, {
      get: (target, prop) => {
        const value: unknown = Reflect.get(target, prop, target);
        if (typeof value !== 'function') return value;
        if (prop === 'read') {
          return (...args: unknown[]) => {
            this.fileReads++;
            return (value as (...a: unknown[]) => unknown).apply(target, args);
          };
        }
        if (prop === 'write' || prop === 'writev') {
          return async (...args: unknown[]) => {
            if (this.holdWrites) await this.holdWrites;
            return (value as (...a: unknown[]) => unknown).apply(target, args);
          };
        }
        return (value as (...a: unknown[]) => unknown).bind(target);
      },
    });
    return { path: temp.path, handle };
  }
}

interface BodyHooks {
  chunk?: number;
  /** Awaited before the chunk at `offset` is sent. */
  before?: (offset: number) => Promise<void> | void;
  /** The upstream connection breaks once this many bytes were sent. */
  resetAt?: number;
}

/** An upstream body: `bytes` in chunks, with a hook before each and an optional reset. */
function bodyOf(bytes: Buffer, hooks: BodyHooks = {}): Readable {
  const chunk = hooks.chunk ?? 64 * KiB;
  return Readable.from(
    (async function* () {
      for (let offset = 0; offset < bytes.length; offset += chunk) {
        await hooks.before?.(offset);
        if (hooks.resetAt !== undefined && offset >= hooks.resetAt) throw Object.assign(new Error('socket reset'), { code: 'ECONNRESET' });
        yield bytes.subarray(offset, Math.min(offset + chunk, bytes.length));
      }
    })(),
    { objectMode: false },
  );
}

/** Everything a reader gives, and how it ended. */
async function collect(reader: Readable): Promise<{ bytes: Buffer; error: Error | undefined }> {
  const parts: Buffer[] = [];
  let error: Error | undefined;
  try {
    for await (const part of reader) parts.push(part as Buffer);
  } catch (err) {
    error = err as Error;
  }
  return { bytes: Buffer.concat(parts), error };
}

describe('a blob fill fed from memory', () => {
  let dir: string;
  let store: ObservedStore;

  beforeEach(async () => {
    dir = await makeTempDir('rc-fill');
    store = new ObservedStore(dir);
    await store.ensureDirectories();
  });

  afterEach(async () => {
    await removeTempDir(dir);
  });

  function start(fill: BlobFill, body: () => Readable | Promise<Readable>, size: number | undefined): Promise<void> {
    return fill.run(async () => ({ body: await body(), size }), () => undefined);
  }

  /** A fill of `size` random bytes whose temp-file writes wait for `writes`, started and answered. */
  async function startWithWritesHeld(size: number): Promise<{ bytes: Buffer; fill: BlobFill; writes: ReturnType<typeof deferred>; run: Promise<void> }> {
    const bytes = randomBytes(size);
    const fill = new BlobFill(sha256(bytes), store);
    const writes = deferred();
    store.holdWrites = writes.promise;
    const run = start(fill, () => bodyOf(bytes), bytes.length);
    await fill.ready;
    return { bytes, fill, writes, run };
  }

  /** A fill of `size` random bytes whose upstream body stops before the chunk at `holdAt` until `held` resolves. */
  async function startHeldAt(
    size: number,
    holdAt: number,
  ): Promise<{ bytes: Buffer; fill: BlobFill; held: ReturnType<typeof deferred>; reachedHold: ReturnType<typeof deferred>; run: Promise<void> }> {
    const bytes = randomBytes(size);
    const fill = new BlobFill(sha256(bytes), store);
    const held = deferred();
    const reachedHold = deferred();
    const run = start(
      fill,
      () =>
        bodyOf(bytes, {
          before: async (offset) => {
            if (offset !== holdAt) return;
            reachedHold.resolve();
            await held.promise;
          },
        }),
      bytes.length,
    );
    await fill.ready;
    return { bytes, fill, held, reachedHold, run };
  }

  it('opens its temp file while the upstream request is in flight', async () => {
    const bytes = randomBytes(100 * KiB);
    const fill = new BlobFill(sha256(bytes), store);
    // The upstream answers only once the temp file is open: a fill that opened it after the answer would never end.
    const run = start(fill, async () => {
      await store.tempOpened.promise;
      return bodyOf(bytes);
    }, bytes.length);
    await run;
    expect(fill.state).toBe('committed');
  }, 10_000);

  it('hands a reader at the head each chunk from memory while its file write is still under way', async () => {
    const { bytes, fill, writes, run } = await startWithWritesHeld(256 * KiB);
    const reader = fill.createReader();
    const [first] = (await once(reader, 'data')) as [Buffer];
    // Nothing reached the file yet, and the reader already has the body's first bytes.
    expect(first.length).toBeGreaterThan(0);
    expect(first.equals(bytes.subarray(0, first.length))).toBe(true);
    writes.resolve();
    const rest = await collect(reader);
    expect(rest.error).toBeUndefined();
    expect(Buffer.concat([first, rest.bytes]).equals(bytes)).toBe(true);
    await run;
    expect(fill.state).toBe('committed');
  }, 10_000);

  it('releases the last byte once the digest verifies, without waiting for the file to hold it', async () => {
    const { bytes, fill, writes, run } = await startWithWritesHeld(300 * KiB);
    const { bytes: got, error } = await collect(fill.createReader());
    expect(error).toBeUndefined();
    expect(got.equals(bytes)).toBe(true);
    expect(fill.verified).toBe(true);
    // Verified is not stored: the commit still waits for the file.
    expect(fill.state).toBe('filling');
    writes.resolve();
    await run;
    expect(fill.state).toBe('committed');
    expect(await store.size(fill.digest)).toBe(bytes.length);
  }, 10_000);

  it('keeps memory flat with slow readers: one bounded window for the fill, however large the blob and however many readers', async () => {
    const bytes = randomBytes(32 * MiB);
    const fill = new BlobFill(sha256(bytes), store);
    let peakWindow = 0;
    fill.on('change', () => (peakWindow = Math.max(peakWindow, fill.bufferedBytes)));
    const run = start(fill, () => bodyOf(bytes), bytes.length);
    await fill.ready;
    // 16 clients that read nothing while the blob downloads, and one that keeps up.
    const slow = Array.from({ length: 16 }, () => fill.createReader());
    const fast = collect(fill.createReader());
    await run;
    expect(fill.state).toBe('committed');
    expect(peakWindow).toBeGreaterThan(0);
    expect(peakWindow).toBeLessThanOrEqual(WINDOW_BOUND);
    // What the slow readers buffered themselves: their high-water mark, not the blob.
    const buffered = slow.reduce((n, r) => n + r.readableLength, 0);
    expect(buffered).toBeLessThanOrEqual(slow.length * 320 * KiB);
    expect((await fast).bytes.equals(bytes)).toBe(true);
    // Far behind the window: they read the file, and get every byte right.
    const readsBefore = store.fileReads;
    for (const r of slow) expect((await collect(r)).bytes.equals(bytes)).toBe(true);
    expect(store.fileReads).toBeGreaterThan(readsBefore);
    expect(fill.bufferedBytes).toBe(0);
  }, 60_000);

  it('lets a reader that fell behind the window continue from the file, then catch up with the fill', async () => {
    const { bytes, fill, held, reachedHold, run } = await startHeldAt(16 * MiB, 12 * MiB);
    const reader = fill.createReader();
    await reachedHold.promise;
    // 12 MiB received, the reader still at 0: 8 MiB behind the window's start.
    expect(fill.written).toBe(12 * MiB);
    expect(fill.bufferedBytes).toBeLessThanOrEqual(WINDOW_BOUND);
    const got = collect(reader);
    held.resolve();
    const { bytes: read, error } = await got;
    expect(error).toBeUndefined();
    expect(read.equals(bytes)).toBe(true);
    expect(store.fileReads).toBeGreaterThan(0);
    await run;
  }, 30_000);

  /**
   * `count` readers of a 16 MiB fill, each piped into a socket-like sink that lags `lagTurns`, all still at 0 when 12 MiB
   * were received: 8 MiB of file behind the window for each, 32 reads of 256 KiB. Resolves when the fill and every pipe
   * are done.
   */
  async function pipedBehindWindow(count: number, lagTurns: number): Promise<{ bytes: Buffer; sinks: LaggingSink[] }> {
    const { bytes, fill, held, reachedHold, run } = await startHeldAt(16 * MiB, 12 * MiB);
    const readers = Array.from({ length: count }, () => fill.createReader());
    await reachedHold.promise;
    const sinks = readers.map(() => new LaggingSink(lagTurns, 64 * KiB));
    const piped = readers.map((reader, i) => pipeline(reader, sinks[i] as LaggingSink));
    held.resolve();
    await Promise.all(piped);
    await run;
    return { bytes, sinks };
  }

  it('piped into sockets, readers behind the window read the file into a few reused buffers', async () => {
    const { bytes, sinks } = await pipedBehindWindow(4, 1);
    for (const sink of sinks) {
      expect(Buffer.concat(sink.received).equals(bytes)).toBe(true);
      expect(sink.overwritten).toBe(0);
      // The window's chunks are views of the body's one buffer; each file read used to allocate its own.
      expect(sink.arrays.size).toBeLessThanOrEqual(1 + 3);
    }
    expect(store.fileReads).toBeGreaterThanOrEqual(4 * 32);
  }, 30_000);

  it('piped into sockets, a herd of readers behind the window holds one read buffer each beyond the read-ahead budget', async () => {
    // The budget (4 MiB, blob-store.ts) lets 5 readers read ahead into 3 buffers of 256 KiB; the other 11 hold one.
    const { bytes, sinks } = await pipedBehindWindow(16, 2);
    // Buffers each reader read the file into: every array but the body's (the window's chunks are views of it).
    const own = sinks.map((sink) => [...sink.arrays].filter((a) => a !== bytes.buffer).length);
    for (const sink of sinks) {
      expect(Buffer.concat(sink.received).equals(bytes)).toBe(true);
      expect(sink.overwritten).toBe(0);
    }
    expect(own.slice(5)).toEqual(Array(11).fill(1));
    for (const n of own.slice(0, 5)) expect(n).toBeLessThanOrEqual(3);
    // Every reader read its 8 MiB behind the window from the file (32 reads of 256 KiB or more).
    expect(store.fileReads).toBeGreaterThanOrEqual(16 * 32);
    // Closed, the readers gave their places back: the next ones read ahead again.
    expect(store.fillReadAhead.take(4 * MiB - 256 * KiB)).toBe(true);
  }, 30_000);

  it('checks the external-memory guard as received bytes pass, about once per MiB', async () => {
    const bytes = randomBytes(8 * MiB + 12_345);
    let checks = 0;
    const guard = new (class extends ExternalMemoryGuard {
      override check(): void {
        checks++;
      }
    })({ limitBytes: 40 * MiB, collect: undefined });
    const fill = new BlobFill(sha256(bytes), store, guard);
    const got = collect(await start(fill, () => bodyOf(bytes), bytes.length).then(() => fill.createReader()));
    expect((await got).bytes.equals(bytes)).toBe(true);
    expect(checks).toBe(8);
  });

  it('serves many readers at different offsets and ranges, joining before, during and after the fill', async () => {
    const size = 10 * MiB + 12_345;
    const bytes = randomBytes(size);
    const fill = new BlobFill(sha256(bytes), store);
    const ranges: [number, number | undefined][] = [
      [0, undefined],
      [0, 0],
      [1, 99],
      [64 * KiB - 1, 64 * KiB],
      [3 * MiB + 17, 7 * MiB + 3],
      [size - 1, undefined],
      [size - 100, size - 1],
      [5 * MiB, undefined],
    ];
    const results: Promise<{ want: Buffer; got: { bytes: Buffer; error: Error | undefined } }>[] = [];
    const attach = (): void => {
      for (const [s, e] of ranges) {
        results.push(collect(fill.createReader(s, e)).then((got) => ({ want: bytes.subarray(s, e === undefined ? size : e + 1), got })));
      }
    };
    const run = start(
      fill,
      () =>
        bodyOf(bytes, {
          chunk: 50_000,
          // New readers join at several points of the download, some behind the window, some inside it.
          before: (offset) => {
            if (offset === 50_000 || offset === 2_000_000 || offset === 9_000_000) attach();
          },
        }),
      size,
    );
    await fill.ready;
    attach();
    await fill.verification;
    attach();
    await run;
    await Promise.all(results);
    attach(); // after the commit (and, once the others are done, from the stored file)
    const all = await Promise.all(results);
    expect(all).toHaveLength(ranges.length * 6);
    for (const { want, got } of all) {
      expect(got.error).toBeUndefined();
      expect(got.bytes.length).toBe(want.length);
      expect(got.bytes.equals(want)).toBe(true);
    }
  }, 30_000);

  const failures: { name: string; body: (bytes: Buffer) => Readable; code: string }[] = [
    { name: 'the upstream resets mid-stream', body: (bytes) => bodyOf(bytes, { resetAt: 3 * MiB }), code: 'ECONNRESET' },
    {
      name: 'the digest does not match (last byte wrong)',
      body: (bytes) => {
        const wrong = Buffer.from(bytes);
        wrong[wrong.length - 1] = (wrong[wrong.length - 1] as number) ^ 0xff;
        return bodyOf(wrong);
      },
      code: 'DIGEST_INVALID',
    },
  ];
  for (const failure of failures) {
    it(`never gives any reader a complete body or range when ${failure.name}`, async () => {
      const size = 6 * MiB;
      const bytes = randomBytes(size);
      const fill = new BlobFill(sha256(bytes), store);
      const run = start(fill, () => failure.body(bytes), size);
      await fill.ready;
      // At the head, a range that arrives whole before the failure, a range across it, and a reader that waits.
      const ranges: [number, number | undefined][] = [
        [0, undefined],
        [0, 99],
        [MiB, 2 * MiB],
        [2 * MiB, size - 1],
        [size - 1, undefined],
      ];
      const readers = ranges.map(([s, e]) => ({ want: (e ?? size - 1) - s + 1, got: collect(fill.createReader(s, e)) }));
      const idle = fill.createReader();
      await run;
      expect(fill.state).toBe('failed');
      expect((fill.error as { code?: string }).code).toBe(failure.code);
      for (const r of [...readers, { want: size, got: collect(idle) }]) {
        const { bytes: got, error } = await r.got;
        expect(error).toBeDefined();
        expect(got.length).toBeLessThan(r.want);
      }
      expect(fill.bufferedBytes).toBe(0);
      expect(await readdir(join(dir, 'tmp'))).toEqual([]);
      expect(await store.size(fill.digest)).toBeUndefined();
    }, 30_000);
  }
});
