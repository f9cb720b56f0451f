import { statfs, unlink } from 'node:fs/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { EvictionSettings } from '../config/load.js';
import type { Metadata } from '../db/content-index.js';
import { parseImageReference } from '../oci/reference.js';
import type { BlobStore } from '../store/blob-store.js';

/** One evictable unit: a top-level manifest with everything only it references, or a blob no manifest holds. */
export interface EvictionUnit {
  root: string;
  members: string[];
  lastAccess: number;
}

/** What a collection did (or, dry, would do). */
export interface EvictionResult {
  usedPercentBefore: number;
  bytesToFree: number;
  freedBytes: number;
  /** `names`: what named the image before it went (tags, else repositories), when the collection was asked for them. */
  evicted: { root: string; bytes: number; lastAccess: number; names?: string[] }[];
  skippedBusy: number;
  skippedPinned: number;
}

/** What eviction measures usage against: the configured bound, or the store's filesystem. */
export interface StoreUsage {
  basis: 'maxStorageBytes' | 'filesystem';
  /** Bytes of content in the store. */
  storedBytes: number;
  /** Bytes counted against the capacity: the store's content, or everything used on its filesystem. */
  usedBytes: number;
  capacityBytes: number;
}

interface Usage {
  percent: number;
  bytesToFree: number;
}

/** Rows read per query while building the eviction list: the event loop gets a turn between pages. */
const PAGE_ROWS = 2_000;
/** Roots walked between two turns of the event loop. */
const ROOTS_PER_TURN = 2_000;
/**
 * Units whose rows are deleted in one transaction, unless the evictor is told otherwise: each transaction blocks the
 * event loop. At 126k rows, 100 units took up to 200-250 ms of CPU each, 20 about 45 ms, for the same total.
 */
const REMOVE_BATCH_UNITS = 20;
/** Files removed at once after their rows are gone. */
const REMOVE_CONCURRENCY = 16;

/** The index of `rowid` in `rowids` (ascending), or undefined when it is not there (a row written after the read). */
function indexOfRowid(rowids: readonly number[], rowid: number): number | undefined {
  let lo = 0;
  let hi = rowids.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const at = rowids[mid] as number;
    if (at === rowid) return mid;
    if (at < rowid) lo = mid + 1;
    else hi = mid - 1;
  }
  return undefined;
}

function ignoreMissing(err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
}

/**
 * The store's blobs and references as the eviction list needs them, by blob id (the index of its row in the pages
 * read): arrays and flags instead of Maps and Sets of digest strings (~0.8 CPU s at 126k rows).
 */
interface StoreGraph {
  digests: string[];
  lastAccess: number[];
  sizes: number[];
  /** A manifest's references are `refChild[firstRef[id]]` onwards, `refCount[id]` of them (stored children only). */
  firstRef: Int32Array;
  refCount: Int32Array;
  refChild: number[];
  /** 1 for a blob some manifest references. */
  isChild: Uint8Array;
  manifests: number[];
}

/** An eviction unit by blob id. */
interface IdUnit {
  root: number;
  members: number[];
  lastAccess: number;
}

/**
 * Evicts least-recently-used images when usage crosses the high threshold, until under the low one. Content being
 * downloaded or served and pinned images are never evicted. Rows and pull records go in one transaction, files after:
 * a row always means a complete file, and a record never outlives (or is orphaned from) its content.
 */
export class Evictor {
  private running: Promise<EvictionResult> | undefined;
  /** Bytes that may still be stored before usage can reach the high threshold, as of the last measurement. */
  private headroom = 0;

  constructor(
    private readonly deps: {
      store: BlobStore;
      metadata: Metadata;
      settings: EvictionSettings;
      log: Logger;
      isBusy: (digest: string) => boolean;
      onEvict?: (units: number) => void;
      /** Called with the digests whose rows were just deleted (before their files go). */
      onRemoved?: (digests: readonly string[]) => void;
      /**
       * Units whose rows are deleted in one transaction (default 20: a server's requests wait while one runs). The
       * `gc` command, alone with the store, deletes everything in one: each further batch rewrites most index
       * pages again (10 % of 126k rows with a 256 MB page cache: 1.05 against 1.6 CPU s in 12 batches).
       */
      removeBatchUnits?: number;
    },
  ) {}

  /**
   * Notes `bytes` newly stored; true when usage may now have reached the high threshold, so a collection is worth
   * running. Only the store's own growth is counted between measurements: other writers to the filesystem are
   * seen by the next periodic collection.
   */
  noteStored(bytes: number): boolean {
    this.headroom -= bytes;
    return this.headroom <= 0;
  }

  /**
   * How full the store is: against `maxStorageBytes` when set (so a bound is exact and testable), else against
   * the filesystem holding the store (df's used / (used + available)), as the kubelet measures its image disk.
   * Reads only: the status page and metrics measure as often as they like.
   */
  async measure(): Promise<StoreUsage> {
    const { settings, metadata, store } = this.deps;
    const stored = metadata.storedBytes();
    if (settings.maxStorageBytes !== undefined) return { basis: 'maxStorageBytes', storedBytes: stored, usedBytes: stored, capacityBytes: settings.maxStorageBytes };
    const fs = await statfs(store.layout.root);
    const used = (fs.blocks - fs.bfree) * fs.bsize;
    return { basis: 'filesystem', storedBytes: stored, usedBytes: used, capacityBytes: used + fs.bavail * fs.bsize };
  }

  /** Usage against the thresholds; also sets the headroom `noteStored` counts down. */
  async usage(): Promise<Usage> {
    const { usedBytes: used, capacityBytes: capacity } = await this.measure();
    const high = this.deps.settings.highThresholdPercent;
    const low = this.deps.settings.lowThresholdPercent;
    const percent = capacity > 0 ? (used / capacity) * 100 : 0;
    this.headroom = (capacity * high) / 100 - used;
    return { percent, bytesToFree: percent >= high ? Math.ceil(used - (capacity * low) / 100) : 0 };
  }

  /** Runs one collection; concurrent calls share it. */
  collect(options: { dryRun?: boolean; names?: boolean } = {}): Promise<EvictionResult> {
    this.running ??= this.collectOnce(options).finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** Resolves once no collection is running. */
  async idle(): Promise<void> {
    await this.running?.catch(() => undefined);
  }

  /** Evictable units in least-recently-used order. */
  async units(): Promise<EvictionUnit[]> {
    const graph = await this.readGraph();
    const { digests } = graph;
    return (await this.unitsOf(graph)).map((u) => ({ root: digests[u.root] ?? '', members: u.members.map((m) => digests[m] ?? ''), lastAccess: u.lastAccess }));
  }

  /**
   * Reads blobs, references and manifests in keyset pages, yielding between pages, so a large store never blocks
   * the event loop for long (one read of 110k rows blocked it ~0.5 s). Pages are not one snapshot: rows written
   * meanwhile may be missed, which only leaves new content out of this round (and a blob whose manifest arrived
   * meanwhile looks unreferenced but was just used, so it sorts last).
   */
  private async readGraph(): Promise<StoreGraph> {
    const digests: string[] = [];
    const lastAccess: number[] = [];
    const sizes: number[] = [];
    const idOf = new Map<string, number>();
    // Manifests and references name a blob by its rowid; rows come in rowid order, so a rowid's id is found by
    // binary search over this list (no second Map).
    const rowids: number[] = [];
    for (let after = 0; ; ) {
      const rows = this.deps.metadata.blobTuples(after, PAGE_ROWS);
      for (const [rowid, digest, at, size] of rows) {
        idOf.set(digest, digests.length);
        rowids.push(rowid);
        digests.push(digest);
        lastAccess.push(at);
        sizes.push(size);
      }
      if (rows.length < PAGE_ROWS) break;
      after = rows[rows.length - 1]?.[0] ?? after;
      await nextTurn();
    }
    const n = digests.length;
    const graph: StoreGraph = { digests, lastAccess, sizes, firstRef: new Int32Array(n), refCount: new Int32Array(n), refChild: [], isChild: new Uint8Array(n), manifests: [] };
    // References come in manifest order, so each manifest's stored children are one run of refChild, and its id is
    // looked up once per run (a lookup of a digest string costs ~0.8 µs at 126k).
    let lastManifest = -1;
    let m: number | undefined;
    for (let after: readonly [number, string] = [0, '']; ; ) {
      const rows = this.deps.metadata.refPage(after, PAGE_ROWS);
      for (const [manifest, child] of rows) {
        if (manifest !== lastManifest) {
          lastManifest = manifest;
          m = indexOfRowid(rowids, manifest);
        }
        const c = idOf.get(child);
        if (m === undefined || c === undefined) continue;
        if (graph.refCount[m] === 0) graph.firstRef[m] = graph.refChild.length;
        graph.refChild.push(c);
        graph.refCount[m] = (graph.refCount[m] ?? 0) + 1;
        graph.isChild[c] = 1;
      }
      if (rows.length < PAGE_ROWS) break;
      after = rows[rows.length - 1] ?? after;
      await nextTurn();
    }
    for (let after = 0; ; ) {
      const rows = this.deps.metadata.manifestPage(after, PAGE_ROWS);
      for (const rowid of rows) {
        const id = indexOfRowid(rowids, rowid);
        if (id !== undefined) graph.manifests.push(id);
      }
      if (rows.length < PAGE_ROWS) break;
      after = rows[rows.length - 1] ?? after;
      await nextTurn();
    }
    return graph;
  }

  private async unitsOf(graph: StoreGraph): Promise<IdUnit[]> {
    const { lastAccess, firstRef, refCount, refChild, isChild } = graph;
    const units: IdUnit[] = [];
    const covered = new Uint8Array(lastAccess.length);
    // The walk that last reached each blob: a unit's members without a Set per root.
    const seenBy = new Int32Array(lastAccess.length);
    let walked = 0;
    for (const root of graph.manifests) {
      // A manifest another manifest references (a platform's image of an index) goes with its index.
      if (isChild[root] === 1) continue;
      const walk = ++walked;
      const members: number[] = [];
      let newest = 0;
      const visit = (d: number): void => {
        if (seenBy[d] === walk) return;
        seenBy[d] = walk;
        members.push(d);
        covered[d] = 1;
        newest = Math.max(newest, lastAccess[d] ?? 0);
        const first = firstRef[d] ?? 0;
        for (let i = first; i < first + (refCount[d] ?? 0); i++) visit(refChild[i] ?? d);
      };
      visit(root);
      units.push({ root, members, lastAccess: newest });
      if (walked % ROOTS_PER_TURN === 0) await nextTurn();
    }
    for (let d = 0; d < lastAccess.length; d++) if (covered[d] === 0) units.push({ root: d, members: [d], lastAccess: lastAccess[d] ?? 0 });
    return units.sort((a, b) => a.lastAccess - b.lastAccess);
  }

  private pinnedDigests(): Set<string> {
    const pinned = new Set<string>();
    for (const ref of this.deps.settings.pinnedImages) {
      const parsed = parseImageReference(ref);
      if (parsed.digest) pinned.add(parsed.digest);
      const tag = parsed.tag ?? (parsed.digest ? undefined : 'latest');
      const row = tag ? this.deps.metadata.getTag(parsed.registry, parsed.repository, tag) : undefined;
      if (row) pinned.add(row.digest);
    }
    return pinned;
  }

  private async collectOnce(options: { dryRun?: boolean; names?: boolean }): Promise<EvictionResult> {
    const usage = await this.usage();
    const result: EvictionResult = { usedPercentBefore: usage.percent, bytesToFree: usage.bytesToFree, freedBytes: 0, evicted: [], skippedBusy: 0, skippedPinned: 0 };
    if (usage.bytesToFree <= 0) return result;
    // Least recently used needs the latest accesses, which are written in batches.
    this.deps.metadata.flushTouches();
    const graph = await this.readGraph();
    const units = await this.unitsOf(graph);
    const { digests, sizes } = graph;
    const pinned = this.pinnedDigests();
    // How many units hold each blob: a shared layer goes only with the last image that holds it.
    const holders = new Int32Array(digests.length);
    for (const u of units) for (const m of u.members) holders[m] = (holders[m] ?? 0) + 1;
    const batchUnits = this.deps.removeBatchUnits ?? REMOVE_BATCH_UNITS;
    // Units' rows go in batches: one transaction per unit wrote the same index pages to the WAL again and again
    // (912 units, 10k blobs: 3.8 CPU s). Each batch's busy checks and its delete run in one synchronous stretch.
    let batch: string[] = [];
    let inBatch = 0;
    for (const unit of units) {
      if (result.freedBytes >= usage.bytesToFree) break;
      const members = unit.members.map((m) => digests[m] ?? '');
      if (members.some((m) => pinned.has(m))) {
        result.skippedPinned++;
        continue;
      }
      if (members.some((m) => this.deps.isBusy(m))) {
        result.skippedBusy++;
        continue;
      }
      // Only what no other kept image references goes.
      const doomed: string[] = [];
      let bytes = 0;
      for (const m of unit.members) {
        if ((holders[m] ?? 0) <= 1) {
          bytes += sizes[m] ?? 0;
          doomed.push(digests[m] ?? '');
        }
        holders[m] = (holders[m] ?? 1) - 1;
      }
      result.freedBytes += bytes;
      const root = digests[unit.root] ?? '';
      // Named before its rows go (eviction removes the tags and links that name it), and only what is evicted.
      result.evicted.push({ root, bytes, lastAccess: unit.lastAccess, ...(options.names ? { names: this.deps.metadata.imageNames(root) } : {}) });
      if (options.dryRun) continue;
      batch.push(...doomed);
      if (++inBatch >= batchUnits) {
        await this.remove(batch);
        batch = [];
        inBatch = 0;
      }
    }
    if (batch.length > 0) await this.remove(batch);
    if (!options.dryRun && result.evicted.length > 0) {
      this.deps.onEvict?.(result.evicted.length);
      this.deps.log.info({ images: result.evicted.length, freedBytes: result.freedBytes, usedPercent: Math.round(usage.percent) }, 'evicted least recently used images');
    }
    return result;
  }

  private async remove(digests: string[]): Promise<void> {
    // Rows (and, by cascade, manifests, references, pull records, preloaded marks) first, in one transaction.
    this.deps.metadata.deleteContent(digests);
    this.deps.onRemoved?.(digests);
    // unlink, not rm: rm's lstat and recursion handling cost ~5× as much per file, and these are plain files.
    // A few loops over one list, not a limiter per file: p-limit's queue cost about as much as the unlinks
    // (12.6k files: ~0.65 s against ~0.35 s).
    let next = 0;
    const unlinkRest = async (): Promise<void> => {
      for (let d = digests[next++]; d !== undefined; d = digests[next++]) await unlink(this.deps.store.pathFor(d)).catch(ignoreMissing);
    };
    await Promise.all(Array.from({ length: REMOVE_CONCURRENCY }, unlinkRest));
  }
}
