import { rm, statfs } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { EvictionSettings } from '../config/load.js';
import type { Metadata } from '../db/queries.js';
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
  evicted: { root: string; bytes: number; lastAccess: number }[];
  skippedBusy: number;
  skippedPinned: number;
}

interface Usage {
  percent: number;
  bytesToFree: number;
}

/**
 * Evicts least-recently-used images when usage crosses the high threshold, until under the low one. Content being
 * downloaded or served and pinned images are never evicted. Rows and pull records go in one transaction, files after:
 * a row always means a complete file, and a record never outlives (or is orphaned from) its content.
 */
export class Evictor {
  private running: Promise<EvictionResult> | undefined;

  constructor(
    private readonly deps: {
      store: BlobStore;
      metadata: Metadata;
      settings: EvictionSettings;
      log: Logger;
      isBusy: (digest: string) => boolean;
      onEvict?: (units: number) => void;
    },
  ) {}

  /**
   * How full the store is: against `maxStorageBytes` when set (so a bound is exact and testable), else against
   * the filesystem holding the store (df's used / (used + available)), as the kubelet measures its image disk.
   */
  async usage(): Promise<Usage> {
    const { settings, metadata, store } = this.deps;
    const stored = metadata.storedBytes();
    const high = settings.highThresholdPercent;
    const low = settings.lowThresholdPercent;
    if (settings.maxStorageBytes !== undefined) {
      const percent = (stored / settings.maxStorageBytes) * 100;
      return { percent, bytesToFree: percent >= high ? Math.ceil(stored - (settings.maxStorageBytes * low) / 100) : 0 };
    }
    const fs = await statfs(store.layout.root);
    const used = (fs.blocks - fs.bfree) * fs.bsize;
    const capacity = used + fs.bavail * fs.bsize;
    const percent = capacity > 0 ? (used / capacity) * 100 : 0;
    return { percent, bytesToFree: percent >= high ? Math.ceil(used - (capacity * low) / 100) : 0 };
  }

  /** Runs one collection; concurrent calls share it. */
  collect(options: { dryRun?: boolean } = {}): Promise<EvictionResult> {
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
  units(): EvictionUnit[] {
    const db = this.deps.metadata.db;
    const lastAccess = new Map(
      (db.prepare('SELECT digest, last_access FROM blobs').all() as { digest: string; last_access: number }[]).map((r) => [r.digest, r.last_access]),
    );
    const refs = db.prepare('SELECT manifest, child FROM manifest_refs').all() as { manifest: string; child: string }[];
    const children = new Map<string, string[]>();
    const isChild = new Set<string>();
    for (const r of refs) {
      if (!children.has(r.manifest)) children.set(r.manifest, []);
      children.get(r.manifest)?.push(r.child);
      isChild.add(r.child);
    }
    const manifests = db.prepare('SELECT digest FROM manifests').pluck().all() as string[];
    const units: EvictionUnit[] = [];
    const covered = new Set<string>();
    for (const root of manifests) {
      if (isChild.has(root)) continue;
      const members = new Set<string>();
      const walk = (d: string): void => {
        if (members.has(d) || !lastAccess.has(d)) return;
        members.add(d);
        for (const c of children.get(d) ?? []) walk(c);
      };
      walk(root);
      for (const m of members) covered.add(m);
      units.push({ root, members: [...members], lastAccess: Math.max(...[...members].map((m) => lastAccess.get(m) ?? 0)) });
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

  private async collectOnce(options: { dryRun?: boolean }): Promise<EvictionResult> {
    this.deps.metadata.flushTouches();
    const usage = await this.usage();
    const result: EvictionResult = { usedPercentBefore: usage.percent, bytesToFree: usage.bytesToFree, freedBytes: 0, evicted: [], skippedBusy: 0, skippedPinned: 0 };
    if (usage.bytesToFree <= 0) return result;
    const units = this.units();
    const pinned = this.pinnedDigests();
    const holders = new Map<string, number>();
    for (const u of units) for (const m of u.members) holders.set(m, (holders.get(m) ?? 0) + 1);
    const sizes = new Map(this.deps.metadata.db.prepare('SELECT digest, size FROM blobs').all().map((r) => [(r as { digest: string }).digest, (r as { size: number }).size]));
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
      if (!options.dryRun) await this.remove(doomed);
      result.freedBytes += bytes;
      result.evicted.push({ root: unit.root, bytes, lastAccess: unit.lastAccess });
    }
    if (!options.dryRun && result.evicted.length > 0) {
      this.deps.onEvict?.(result.evicted.length);
      this.deps.log.info({ images: result.evicted.length, freedBytes: result.freedBytes, usedPercent: Math.round(usage.percent) }, 'evicted least recently used images');
    }
    return result;
  }

  private async remove(digests: string[]): Promise<void> {
    const db = this.deps.metadata.db;
    const del = db.prepare('DELETE FROM blobs WHERE digest = ?');
    const delLinks = db.prepare('DELETE FROM repository_digests WHERE digest = ?');
    const delTags = db.prepare('DELETE FROM tags WHERE digest = ?');
    // Rows (and, by cascade, manifests, references, pull records, preloaded marks) first, in one transaction.
    db.transaction(() => {
      for (const d of digests) {
        delTags.run(d);
        delLinks.run(d);
        del.run(d);
      }
    })();
    for (const d of digests) await rm(this.deps.store.pathFor(d), { force: true });
  }
}
