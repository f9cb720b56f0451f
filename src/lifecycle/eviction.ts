import { statfs, unlink } from 'node:fs/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import pLimit from 'p-limit';
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
/** Units whose rows are deleted in one transaction. */
const REMOVE_BATCH_UNITS = 100;
/** Files removed at once after their rows are gone. */
const REMOVE_CONCURRENCY = 16;

function ignoreMissing(err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
}

/** The store's blobs and references as the eviction list needs them. */
interface StoreGraph {
  lastAccess: Map<string, number>;
  sizes: Map<string, number>;
  children: Map<string, string[]>;
  isChild: Set<string>;
  manifests: string[];
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
    return this.unitsOf(await this.readGraph());
  }

  /**
   * Reads blobs, references and manifests in keyset pages, yielding between pages, so a large store never blocks
   * the event loop for long (one read of 110k rows blocked it ~0.5 s). Pages are not one snapshot: rows written
   * meanwhile may be missed, which only leaves new content out of this round (and a blob whose manifest arrived
   * meanwhile looks unreferenced but was just used, so it sorts last).
   */
  private async readGraph(): Promise<StoreGraph> {
    const graph: StoreGraph = { lastAccess: new Map(), sizes: new Map(), children: new Map(), isChild: new Set(), manifests: [] };
    for (let after = 0; ; ) {
      const rows = this.deps.metadata.blobPage(after, PAGE_ROWS);
      for (const r of rows) {
        graph.lastAccess.set(r.digest, r.last_access);
        graph.sizes.set(r.digest, r.size);
      }
      if (rows.length < PAGE_ROWS) break;
      after = rows[rows.length - 1]?.rowid ?? after;
      await nextTurn();
    }
    for (let after = { manifest: '', child: '' }; ; ) {
      const rows = this.deps.metadata.refPage(after, PAGE_ROWS);
      for (const r of rows) {
        let list = graph.children.get(r.manifest);
        if (!list) graph.children.set(r.manifest, (list = []));
        list.push(r.child);
        graph.isChild.add(r.child);
      }
      if (rows.length < PAGE_ROWS) break;
      after = rows[rows.length - 1] ?? after;
      await nextTurn();
    }
    for (let after = ''; ; ) {
      const rows = this.deps.metadata.manifestPage(after, PAGE_ROWS);
      graph.manifests.push(...rows);
      if (rows.length < PAGE_ROWS) break;
      after = rows[rows.length - 1] ?? after;
      await nextTurn();
    }
    return graph;
  }

  private async unitsOf(graph: StoreGraph): Promise<EvictionUnit[]> {
    const { lastAccess, children, isChild } = graph;
    const units: EvictionUnit[] = [];
    const covered = new Set<string>();
    let walked = 0;
    for (const root of graph.manifests) {
      if (isChild.has(root)) continue;
      const members = new Set<string>();
      const walk = (d: string): void => {
        if (members.has(d) || !lastAccess.has(d)) return;
        members.add(d);
        for (const c of children.get(d) ?? []) walk(c);
      };
      walk(root);
      // A manifest stored after the blob pages were read: not part of this round.
      if (members.size === 0) continue;
      let newest = 0;
      for (const m of members) {
        covered.add(m);
        newest = Math.max(newest, lastAccess.get(m) ?? 0);
      }
      units.push({ root, members: [...members], lastAccess: newest });
      if (++walked % ROOTS_PER_TURN === 0) await nextTurn();
    }
    for (const [digest, at] of lastAccess) if (!covered.has(digest)) units.push({ root: digest, members: [digest], lastAccess: at });
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
    const sizes = graph.sizes;
    const pinned = this.pinnedDigests();
    const holders = new Map<string, number>();
    for (const u of units) for (const m of u.members) holders.set(m, (holders.get(m) ?? 0) + 1);
    // Units' rows go in batches: one transaction per unit wrote the same index pages to the WAL again and again
    // (912 units, 10k blobs: 3.8 CPU s). Each batch's busy checks and its delete run in one synchronous stretch.
    let batch: string[] = [];
    let batchUnits = 0;
    for (const unit of units) {
      if (result.freedBytes >= usage.bytesToFree) break;
      if (unit.members.some((m) => pinned.has(m))) {
        result.skippedPinned++;
        continue;
      }
      if (unit.members.some((m) => this.deps.isBusy(m))) {
        result.skippedBusy++;
        continue;
      }
      // Only what no other kept image references goes.
      const doomed = unit.members.filter((m) => (holders.get(m) ?? 0) <= 1);
      for (const m of unit.members) holders.set(m, (holders.get(m) ?? 1) - 1);
      const bytes = doomed.reduce((n, d) => n + (sizes.get(d) ?? 0), 0);
      result.freedBytes += bytes;
      // Named before its rows go (eviction removes the tags and links that name it), and only what is evicted.
      result.evicted.push({ root: unit.root, bytes, lastAccess: unit.lastAccess, ...(options.names ? { names: this.deps.metadata.imageNames(unit.root) } : {}) });
      if (options.dryRun) continue;
      batch.push(...doomed);
      if (++batchUnits >= REMOVE_BATCH_UNITS) {
        await this.remove(batch);
        batch = [];
        batchUnits = 0;
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
    const limit = pLimit(REMOVE_CONCURRENCY);
    // unlink, not rm: rm's lstat and recursion handling cost ~5× as much per file, and these are plain files.
    await Promise.all(digests.map((d) => limit(() => unlink(this.deps.store.pathFor(d)).catch(ignoreMissing))));
  }
}
