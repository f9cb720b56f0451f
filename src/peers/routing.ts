import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { PeerClient, PeerError } from './client.js';
import type { DigestCoordinator, FillOutcome } from './coordinator.js';
import type { ShareScope } from './listener.js';
import { readyAddresses, type Membership } from './membership.js';
import { coordinatorOf } from './ring.js';

/** Where this node should get a blob it lacks. */
export type PeerPlan =
  /** Stream it from another node (it holds it or is filling it). Bytes are untrusted until the digest matches. */
  | { kind: 'peer'; source: string; size: number | undefined; body: Readable }
  /** This node fetches it upstream; the lease keeps other nodes reading from it, and must be ended. */
  | { kind: 'lease'; lease: FillLease }
  /** No usable answer from the cluster (coordinator down or slow): go upstream without a lease. */
  | { kind: 'alone'; reason: string };

/** A lease on one digest held while this node fills it from the upstream. */
export interface FillLease {
  /** Ends the lease: `committed` makes this node a holder, `failed` frees the digest for another node. */
  end(outcome: FillOutcome): void;
}

/** Outcomes for metrics and `/debug/peers`. */
export type PeerEvent = 'coordinator-peer' | 'coordinator-lease' | 'coordinator-unreachable' | 'peer-failed' | 'lease-lost';

/** Tuning of the routing. */
export interface PeerRoutingOptions {
  /** A source that failed this node is skipped for this long. */
  skipMs?: number;
  /** Lease renewals run this often (a third of the coordinator's TTL by default). */
  renewEveryMs?: number;
}

/**
 * Asks the cluster before a blob goes upstream: the digest's coordinator (rendezvous over the ready members and
 * this node) names a node to stream from, or gives this node the lease. Every failure degrades to "go upstream",
 * never to a failed pull: sharing must not make a pull fail where a direct pull would succeed.
 */
export class PeerRouting {
  private readonly skipped = new Map<string, number>();
  private readonly skipMs: number;
  /** The last failures, newest first, for operators. */
  private readonly failures: { peer: string; digest: string; reason: string; at: string }[] = [];

  constructor(
    private readonly deps: {
      self: string;
      membership: Membership;
      coordinator: DigestCoordinator;
      client: PeerClient;
      log: Logger;
      onEvent?: (event: PeerEvent) => void;
      options?: PeerRoutingOptions;
    },
  ) {
    this.skipMs = deps.options?.skipMs ?? 60_000;
  }

  /** Whether `member` may be pointed at (ready and not recently failed). */
  isLive = (member: string): boolean => member === this.deps.self || (readyAddresses(this.deps.membership).includes(member) && !this.isSkipped(member));

  /** Decides where `digest` comes from, streaming from byte `start` when a peer serves it. */
  async plan(digest: string, start = 0, signal?: AbortSignal, scope: ShareScope = {}): Promise<PeerPlan> {
    const registry = scope.registry ?? '';
    const avoid: string[] = [];
    // Two rounds: a source that fails at once is reported and the coordinator asked again.
    for (let round = 0; round < 2; round++) {
      const coordinator = this.coordinatorFor(digest);
      let answer;
      try {
        answer = coordinator === this.deps.self
          ? this.deps.coordinator.claim(digest, this.deps.self, this.isLive, [...avoid, ...this.skippedList()], registry)
          : await this.deps.client.claim(coordinator, digest, [...avoid, ...this.skippedList()], signal, registry);
      } catch (err) {
        this.event('coordinator-unreachable');
        if (coordinator !== this.deps.self) this.skip(coordinator);
        return { kind: 'alone', reason: err instanceof PeerError ? err.message : String(err) };
      }
      if (answer.kind === 'lease') {
        this.event('coordinator-lease');
        return { kind: 'lease', lease: this.holdLease(coordinator, digest, answer.ttlMs, registry) };
      }
      // A coordinator names only a ready member other than this node; anything else is a bad (or hostile) answer.
      if (answer.source === this.deps.self || !readyAddresses(this.deps.membership).includes(answer.source)) {
        this.event('coordinator-unreachable');
        return { kind: 'alone', reason: `coordinator ${coordinator} named ${answer.source}, not a member` };
      }
      this.event('coordinator-peer');
      try {
        const res = await this.deps.client.fetchBlob(answer.source, digest, start, signal, scope);
        return { kind: 'peer', source: answer.source, size: res.size, body: res.body };
      } catch (err) {
        // A holder that no longer has the blob (evicted) is dropped for this digest only; any other failure
        // makes the node suspect for a while.
        this.reportFailed(digest, answer.source, err, !(err instanceof PeerError && err.reason === 'not-found'));
        avoid.push(answer.source);
      }
    }
    return { kind: 'alone', reason: 'no peer could serve the blob' };
  }

  /** A peer's transfer failed or its bytes did not match the digest: skip it for a while and tell the coordinator. */
  reportFailed(digest: string, source: string, err: unknown, skipSource = true): void {
    this.event('peer-failed');
    if (skipSource) this.skip(source);
    this.failures.unshift({ peer: source, digest, reason: err instanceof Error ? err.message : String(err), at: new Date().toISOString() });
    this.failures.length = Math.min(this.failures.length, 20);
    this.deps.log.warn({ peer: source, digest, err: { message: err instanceof Error ? err.message : String(err) } }, 'peer transfer failed; going upstream and skipping that peer for a while');
    const coordinator = this.coordinatorFor(digest);
    if (coordinator === this.deps.self) this.deps.coordinator.dropHolder(digest, source);
    else void this.deps.client.drop(coordinator, digest, source).catch(() => undefined);
  }

  /** Tells the coordinator this node holds `digest` complete (after a commit from a peer's bytes). */
  announce(digest: string): void {
    const coordinator = this.coordinatorFor(digest);
    if (coordinator === this.deps.self) this.deps.coordinator.addHolder(digest, this.deps.self);
    else void this.deps.client.release(coordinator, digest, 'committed').catch(() => undefined);
  }

  /** Members and recent failures, for `/debug/peers`. */
  describe(): {
    self: string;
    members: { address: string; ready: boolean; nodeName?: string; skippedForMs: number }[];
    recentFailures: { peer: string; digest: string; reason: string; at: string }[];
  } {
    const now = Date.now();
    return {
      self: this.deps.self,
      members: this.deps.membership.members().map((m) => ({
        address: m.address,
        ready: m.ready,
        ...(m.nodeName ? { nodeName: m.nodeName } : {}),
        skippedForMs: Math.max(0, (this.skipped.get(m.address) ?? 0) - now),
      })),
      recentFailures: [...this.failures],
    };
  }

  private coordinatorFor(digest: string): string {
    const ring = [...readyAddresses(this.deps.membership).filter((m) => !this.isSkipped(m)), this.deps.self];
    return coordinatorOf(digest, ring) ?? this.deps.self;
  }

  private holdLease(coordinator: string, digest: string, ttlMs: number, registry: string): FillLease {
    const local = coordinator === this.deps.self;
    const every = this.deps.options?.renewEveryMs ?? Math.max(100, Math.floor(ttlMs / 3));
    const timer = setInterval(() => {
      const renewed = local ? Promise.resolve(this.deps.coordinator.renew(digest, this.deps.self, registry)) : this.deps.client.renew(coordinator, digest, undefined, registry);
      renewed.then((ok) => { if (!ok) this.event('lease-lost'); }, () => this.event('lease-lost'));
    }, every);
    timer.unref();
    let ended = false;
    return {
      end: (outcome) => {
        if (ended) return;
        ended = true;
        clearInterval(timer);
        if (local) this.deps.coordinator.release(digest, this.deps.self, outcome, registry);
        else void this.deps.client.release(coordinator, digest, outcome, undefined, registry).catch(() => undefined);
      },
    };
  }

  private skip(member: string): void {
    this.skipped.set(member, Date.now() + this.skipMs);
  }

  private isSkipped(member: string): boolean {
    const until = this.skipped.get(member);
    if (until === undefined) return false;
    if (until > Date.now()) return true;
    this.skipped.delete(member);
    return false;
  }

  private skippedList(): string[] {
    return [...this.skipped.keys()].filter((m) => this.isSkipped(m));
  }

  private event(e: PeerEvent): void {
    this.deps.onEvent?.(e);
  }
}
