import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { RegistryConfig } from '../config/load.js';
import { firstHeader } from '../oci/content-headers.js';
import { OciError } from '../oci/errors.js';
import type { FillLease, PeerPlan } from '../peers/routing.js';
import type { ShareScope } from '../peers/listener.js';
import { drain, type UpstreamClient } from '../upstream/client.js';
import type { Credential } from '../upstream/credentials.js';
import { errorForUpstreamStatus } from '../upstream/errors.js';
import { withIdleTimeout } from '../upstream/idle-timeout.js';
import type { BandwidthLimit } from '../limiter/bandwidth.js';

/** Where the bytes of a fill came from: the upstream, or another node (untrusted until the digest matches). */
export type FillSource = 'upstream' | 'peer';

/** The missing blob a fill needs, and what is known about it before any byte arrives. */
export interface SourceRequest {
  registry: RegistryConfig;
  repository: string;
  digest: string;
  credential?: Credential;
  /** The size a stored manifest of the repository gives the blob (true, unlike any Content-Length), when known. */
  described: number | undefined;
  /** The client is allowed the blob already, so another node's copy may serve it (never for a proof of access). */
  peersAllowed: boolean;
  /** The client is only listed the blob (see CredentialVerifier.blobAccess): other nodes' open content only. */
  openOnly: boolean;
  /** The fill needs no tenant credential: this node may offer it to others (or offers everything by opt-in). */
  shareable: boolean;
  signal: AbortSignal;
}

/** A body to fill from, and how its end must be reported to where it came from. */
export interface SourceBody {
  body: Readable;
  /** The length the body must have: the manifest's size, else the upstream's Content-Length. */
  size: number | undefined;
  /** Where the first byte came from. */
  source: FillSource;
  /** Reports how the fill ended (committed, or failed with `err`): ends leases, blames a lying peer, announces. */
  settle(outcome: 'committed' | 'failed', err?: unknown): void;
  /** Bytes a peer gave (a failure with any is the peer's doing: the upstream must not back off for it). */
  readonly fromPeer: number;
}

/** What the cache needs of the cluster: a plan per digest, blame for a bad source, and news of a new holder. */
export interface PeerSource {
  plan(digest: string, start: number, signal?: AbortSignal, scope?: ShareScope): Promise<PeerPlan>;
  reportFailed(digest: string, source: string, err: unknown, skipSource?: boolean): void;
  announce(digest: string): void;
}

/** Outcomes of the sources seam, for metrics. */
export type SourceEvent = 'peer-complete' | 'peer-failed' | 'peer-mismatch' | 'fallback-upstream';

/**
 * The one place that decides where a missing blob's bytes come from: another node that holds or is filling it
 * (when sharing is on and the client is already allowed the blob), else the upstream. A peer that breaks, stalls
 * or ends early mid-body is left for the upstream, resuming with `Range` from the bytes already taken (or skipping
 * them in a full answer); the fill hashes the joined body, so a lying peer can only make the fill fail, never
 * commit or complete a wrong blob.
 */
export class BlobSources {
  constructor(
    private readonly deps: {
      upstream: UpstreamClient;
      log: Logger;
      bandwidth?: BandwidthLimit | undefined;
      peers?: PeerSource | undefined;
      /** No bytes from a peer for this long counts as a failed transfer. */
      peerIdleMs?: number;
      onEvent?: (event: SourceEvent, bytes?: number) => void;
    },
  ) {}

  /** Whether other nodes are asked before the upstream. */
  get sharing(): boolean {
    return this.deps.peers !== undefined;
  }

  /** Opens the bytes of `req.digest`. Rejects with the upstream's error when neither source can serve it. */
  async open(req: SourceRequest): Promise<SourceBody> {
    const peers = this.deps.peers;
    // Without a size from a stored manifest nothing bounds a peer's body: only the upstream is asked then.
    if (!peers || !req.peersAllowed || req.described === undefined) return this.fromUpstream(req);
    const plan = await peers.plan(req.digest, 0, req.signal, { registry: req.registry.host, openOnly: req.openOnly });
    if (plan.kind === 'alone') return this.fromUpstream(req);
    if (plan.kind === 'lease') {
      // A fill this node may not offer must not attract other nodes: give the digest back at once.
      if (!req.shareable) plan.lease.end('failed');
      try {
        return withLease(await this.fromUpstream(req), req.shareable ? plan.lease : undefined);
      } catch (err) {
        plan.lease.end('failed');
        throw err;
      }
    }
    return this.fromPeer(req, plan, peers);
  }

  private fromPeer(req: SourceRequest, plan: Extract<PeerPlan, { kind: 'peer' }>, peers: PeerSource): SourceBody {
    const sources = this;
    const state = { delivered: 0, fellBack: false };
    const idleMs = this.deps.peerIdleMs ?? 5_000;
    const peerBody = withIdleTimeout(plan.body, idleMs, `peer ${plan.source}`, { floorBytes: PEER_PROGRESS_FLOOR });
    async function* joined(): AsyncGenerator<Buffer> {
      try {
        for await (const chunk of peerBody as AsyncIterable<Buffer>) {
          if (req.described !== undefined && state.delivered + chunk.length > req.described) throw new Error('peer sent more bytes than the blob has');
          state.delivered += chunk.length;
          yield chunk;
        }
        // A clean end short of the known size is a peer that gave up (or lies): the upstream has the rest.
        if (req.described === undefined || state.delivered === req.described) {
          sources.deps.onEvent?.('peer-complete', state.delivered);
          return;
        }
        throw new Error(`peer ended after ${state.delivered} of ${req.described} bytes`);
      } catch (err) {
        if (req.signal.aborted) throw err;
        // Every byte arrived before the break: the hash decides, the upstream has nothing left to send.
        if (state.delivered === req.described) {
          sources.deps.onEvent?.('peer-complete', state.delivered);
          return;
        }
        sources.deps.onEvent?.('peer-failed', state.delivered);
        peers.reportFailed(req.digest, plan.source, err);
      }
      state.fellBack = true;
      sources.deps.onEvent?.('fallback-upstream');
      const rest = await sources.fromUpstream(req, state.delivered);
      yield* rest.body as AsyncIterable<Buffer>;
    }
    return {
      body: Readable.from(joined(), { objectMode: false }),
      size: req.described,
      source: 'peer',
      get fromPeer() {
        return state.delivered;
      },
      settle: (outcome, err) => {
        if (outcome === 'committed') {
          if (req.shareable) peers.announce(req.digest);
          return;
        }
        // Bytes that hashed wrong after a peer gave some of them: the peer is the suspect, whatever followed.
        if (state.delivered > 0 && err instanceof OciError && (err.code === 'DIGEST_INVALID' || err.code === 'SIZE_INVALID')) {
          sources.deps.onEvent?.('peer-mismatch', state.delivered);
          peers.reportFailed(req.digest, plan.source, err);
        }
      },
    };
  }

  /**
   * The upstream GET of the blob, from byte `start` (a `Range` request; a full answer has its first `start` bytes
   * skipped). Checks status and the declared length against the manifest's size before any byte is taken.
   */
  private async fromUpstream(req: SourceRequest, start = 0): Promise<SourceBody> {
    const res = await this.deps.upstream.send({
      registry: req.registry,
      method: 'GET',
      path: `/v2/${req.repository}/blobs/${req.digest}`,
      repository: req.repository,
      signal: req.signal,
      ...(start > 0 ? { headers: { range: `bytes=${start}-` } } : {}),
      ...(req.credential ? { credential: req.credential } : {}),
    });
    const partial = start > 0 && res.status === 206;
    if (res.status !== 200 && !partial) {
      await drain(res.body);
      throw errorForUpstreamStatus(res.status, 'blob', req.registry.host, firstHeader(res.headers['retry-after']));
    }
    if (partial && !new RegExp(`^bytes ${start}-`).test(firstHeader(res.headers['content-range']) ?? '')) {
      await drain(res.body);
      throw new OciError('BLOB_UNKNOWN', 'upstream answered a resumed blob request with another range', { status: 502, detail: { digest: req.digest } });
    }
    const declared = firstHeader(res.headers['content-length']);
    const length = declared === undefined ? undefined : Number(declared);
    const claimed = length !== undefined && Number.isSafeInteger(length) && length >= 0 ? length + (partial ? start : 0) : undefined;
    if (req.described !== undefined && claimed !== undefined && claimed !== req.described) {
      await drain(res.body);
      throw new OciError('SIZE_INVALID', 'upstream Content-Length does not match the manifest', {
        status: 502,
        detail: { digest: req.digest, size: req.described, upstreamSize: claimed },
      });
    }
    const watched = withIdleTimeout(res.body, req.registry.transport.idleTimeoutMs, req.registry.host);
    const throttled = this.deps.bandwidth ? this.deps.bandwidth.throttle(watched) : watched;
    const body = start > 0 && !partial ? skip(throttled, start) : throttled;
    return { body, size: req.described ?? claimed, source: 'upstream', fromPeer: 0, settle: () => undefined };
  }
}

/** Bytes a peer must send within each idle window: a trickle is as useless as a stall, and holds a pull slot. */
const PEER_PROGRESS_FLOOR = 64 * 1024;

function withLease(body: SourceBody, lease: FillLease | undefined): SourceBody {
  return {
    ...body,
    settle: (outcome) => lease?.end(outcome),
  };
}

/** `body` without its first `count` bytes (an upstream that ignored `Range` sent them again). */
function skip(body: Readable, count: number): Readable {
  let left = count;
  async function* rest(): AsyncGenerator<Buffer> {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      if (left >= chunk.length) {
        left -= chunk.length;
        continue;
      }
      const out = left > 0 ? chunk.subarray(left) : chunk;
      left = 0;
      yield out;
    }
  }
  return Readable.from(rest(), { objectMode: false });
}
