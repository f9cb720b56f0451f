import { LRUCache } from 'lru-cache';

/** What a coordinator tells a node that is about to fetch a blob it does not have. */
export type ClaimAnswer =
  /** Another node holds the blob or is filling it: stream it from there. */
  | { kind: 'peer'; source: string }
  /** Nobody has it: the asking node fetches it from the upstream and is its source until the lease ends. */
  | { kind: 'lease'; ttlMs: number };

/** Complete holders remembered per digest. */
const MAX_HOLDERS = 16;

function leaseKey(digest: string, registry: string): string {
  return `${digest} ${registry}`;
}

/** How a node's fill ended, reported back to the coordinator. */
export type FillOutcome = 'committed' | 'failed';

interface Lease {
  holder: string;
  expires: number;
}

/** Tuning of a coordinator; the defaults suit a cluster of up to a few hundred nodes. */
export interface CoordinatorOptions {
  /** A lease not renewed for this long is dropped, so a dead filler stops attracting readers. */
  leaseTtlMs?: number;
  /** Digests whose holders are remembered (least recently used forgotten first). */
  maxDigests?: number;
  now?: () => number;
}

/**
 * The coordinator's state for the digests the ring assigns to this node: who is filling each one (a lease) and who
 * holds it complete. It never fetches anything and never sees credentials; it only points nodes at each other.
 * A node that was pointed at a source that failed reports it, and is then given the next holder or a lease.
 */
export class DigestCoordinator {
  private readonly leases = new Map<string, Lease>();
  private readonly holders: LRUCache<string, Set<string>>;
  private readonly ttlMs: number;
  private readonly now: () => number;

  constructor(options: CoordinatorOptions = {}) {
    this.ttlMs = options.leaseTtlMs ?? 15_000;
    this.now = options.now ?? Date.now;
    this.holders = new LRUCache({ max: options.maxDigests ?? 100_000 });
  }

  /**
   * Answers `node`'s claim on `digest`. `live` says which members count (ready ones); `avoid` lists sources the
   * node already failed to read from. A live lease wins over complete holders: readers of a fill in progress start
   * at once instead of waiting, which is the point of sharing during a rollout.
   */
  claim(digest: string, node: string, live: (member: string) => boolean, avoid: readonly string[] = [], registry = ''): ClaimAnswer {
    const now = this.now();
    const usable = (member: string): boolean => member !== node && live(member) && !avoid.includes(member);
    // A fill in progress is unverified: only readers for the same registry may stream it (another registry's body
    // could be a different, wrong one). Complete holders are verified, whatever registry they came from.
    const key = leaseKey(digest, registry);
    const lease = this.leases.get(key);
    if (lease && lease.expires > now && lease.holder !== node && usable(lease.holder)) return { kind: 'peer', source: lease.holder };
    const holders = this.holders.get(digest);
    const candidates = holders ? [...holders].filter(usable) : [];
    if (candidates.length > 0) {
      // Spread readers over every complete copy instead of hammering the first node that had it.
      return { kind: 'peer', source: candidates[Math.floor(Math.random() * candidates.length)] as string };
    }
    this.leases.set(key, { holder: node, expires: now + this.ttlMs });
    return { kind: 'lease', ttlMs: this.ttlMs };
  }

  /** Extends `node`'s lease while its fill runs; false when the lease is no longer its own. */
  renew(digest: string, node: string, registry = ''): boolean {
    const lease = this.leases.get(leaseKey(digest, registry));
    if (!lease || lease.holder !== node || lease.expires <= this.now()) return false;
    lease.expires = this.now() + this.ttlMs;
    return true;
  }

  /** Ends `node`'s fill: a committed blob makes it a holder; a failed one frees the digest for the next claim. */
  release(digest: string, node: string, outcome: FillOutcome, registry = ''): void {
    const key = leaseKey(digest, registry);
    if (this.leases.get(key)?.holder === node) this.leases.delete(key);
    if (outcome === 'committed') this.addHolder(digest, node);
  }

  /** Records that `node` holds `digest` complete (it committed or reported it). */
  addHolder(digest: string, node: string): void {
    const set = this.holders.get(digest) ?? new Set<string>();
    // A few copies spread the readers; more would only let a liar grow the set without bound.
    if (set.size >= MAX_HOLDERS && !set.has(node)) set.delete(set.values().next().value as string);
    set.add(node);
    this.holders.set(digest, set);
  }

  /** Forgets `node` as a source of `digest` (it evicted the blob, or served it wrongly). */
  dropHolder(digest: string, node: string): void {
    const set = this.holders.get(digest);
    set?.delete(node);
    if (set?.size === 0) this.holders.delete(digest);
    for (const [key, lease] of this.leases) if (key.startsWith(`${digest} `) && lease.holder === node) this.leases.delete(key);
  }

  /** Drops expired leases; called on a timer so an idle coordinator does not keep dead fillers. */
  sweep(): void {
    const now = this.now();
    for (const [digest, lease] of this.leases) if (lease.expires <= now) this.leases.delete(digest);
  }

  /** Counts for `/debug/peers`. */
  stats(): { leases: number; digestsWithHolders: number } {
    return { leases: this.leases.size, digestsWithHolders: this.holders.size };
  }
}
