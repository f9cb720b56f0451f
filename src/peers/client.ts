import { Agent, errors as undiciErrors, type Dispatcher } from 'undici';
import type { Readable } from 'node:stream';
import type { ClaimAnswer, FillOutcome } from './coordinator.js';
import { PEER_PATH, type ShareScope } from './listener.js';
import { PEER_SIGNATURE_HEADER, type PeerSigner } from './signature.js';

/** How long a peer may take before the node stops waiting and goes upstream. */
export interface PeerTimeouts {
  /** TCP connect; a dead node must cost little (default 200 ms). */
  connectMs: number;
  /** Until response headers (default 500 ms). */
  answerMs: number;
  /** No body bytes for this long ends a transfer (default 5 s). */
  idleMs: number;
}

/** The default peer timeouts. */
export const DEFAULT_PEER_TIMEOUTS: PeerTimeouts = { connectMs: 200, answerMs: 500, idleMs: 5_000 };

/** A blob body streaming from a peer. */
export interface PeerBlobResponse {
  /** 200 (whole blob) or 206 (from the requested offset). */
  status: 200 | 206;
  /** Total size when the peer knows it verified, else undefined. */
  size: number | undefined;
  body: Readable;
}

/** Why a peer call failed; the caller falls back to the upstream in every case. */
export class PeerError extends Error {
  constructor(
    message: string,
    readonly reason: 'timeout' | 'unreachable' | 'refused' | 'not-found' | 'bad-answer',
  ) {
    super(message);
    this.name = 'PeerError';
  }
}

/** Signed calls to other nodes' peer listeners. It carries no client credential, ever: only digests. */
export class PeerClient {
  private readonly dispatcher: Dispatcher;
  private readonly timeouts: PeerTimeouts;

  constructor(private readonly deps: { signer: PeerSigner; self: string; timeouts?: PeerTimeouts }) {
    this.timeouts = deps.timeouts ?? DEFAULT_PEER_TIMEOUTS;
    const t = this.timeouts;
    this.dispatcher = new Agent({ connect: { timeout: t.connectMs }, headersTimeout: 0, bodyTimeout: t.idleMs, keepAliveTimeout: 30_000 });
  }

  /** Asks `coordinator` who serves `digest`; `avoid` lists sources that already failed this node. */
  async claim(coordinator: string, digest: string, avoid: readonly string[] = [], signal?: AbortSignal, registry = ''): Promise<ClaimAnswer> {
    const answer = await this.lease(coordinator, digest, { op: 'claim', registry, ...(avoid.length > 0 ? { avoid: avoid.join(',') } : {}) }, signal);
    if (answer.kind === 'peer' && typeof answer.source === 'string') return { kind: 'peer', source: answer.source };
    if (answer.kind === 'lease' && typeof answer.ttlMs === 'number') return { kind: 'lease', ttlMs: answer.ttlMs };
    throw new PeerError(`coordinator ${coordinator} gave an answer of unknown shape`, 'bad-answer');
  }

  /** Renews this node's lease on `digest`; false when the coordinator no longer counts it as the filler. */
  async renew(coordinator: string, digest: string, signal?: AbortSignal, registry = ''): Promise<boolean> {
    return (await this.lease(coordinator, digest, { op: 'renew', registry }, signal)).renewed === true;
  }

  /** Reports how this node's fill of `digest` ended. */
  async release(coordinator: string, digest: string, outcome: FillOutcome, signal?: AbortSignal, registry = ''): Promise<void> {
    await this.lease(coordinator, digest, { op: 'release', outcome, registry }, signal);
  }

  /** Tells the coordinator that `source` failed this node for `digest` (wrong bytes, stall, gone). */
  async drop(coordinator: string, digest: string, source: string, signal?: AbortSignal): Promise<void> {
    await this.lease(coordinator, digest, { op: 'drop', source }, signal);
  }

  /** Streams `digest` from `source`, from byte `start`. The caller hashes what arrives: a peer is not trusted. */
  async fetchBlob(source: string, digest: string, start = 0, signal?: AbortSignal, scope: ShareScope = {}): Promise<PeerBlobResponse> {
    const query = new URLSearchParams({ ...(scope.registry ? { registry: scope.registry } : {}), ...(scope.openOnly ? { open: '1' } : {}) }).toString();
    const path = `${PEER_PATH}/blobs/${digest}${query ? `?${query}` : ''}`;
    const range = start > 0 ? `bytes=${start}-` : undefined;
    const res = await this.send(source, 'GET', path, range, signal);
    if (res.statusCode === 200 || (res.statusCode === 206 && start > 0)) {
      const total = res.statusCode === 200 ? headerValue(res.headers['content-length']) : /\/(\d+)$/.exec(headerValue(res.headers['content-range']) ?? '')?.[1];
      const size = total === undefined ? undefined : Number(total);
      return { status: res.statusCode, size: Number.isSafeInteger(size) ? size : undefined, body: res.body };
    }
    // Error bodies are small; dump() reads at most a bounded amount and frees the connection.
    await res.body.dump().catch(() => undefined);
    throw new PeerError(`peer ${source} answered ${res.statusCode} for a blob`, res.statusCode === 404 ? 'not-found' : res.statusCode === 401 ? 'refused' : 'bad-answer');
  }

  /** Closes pooled connections. */
  async close(): Promise<void> {
    await this.dispatcher.close();
  }

  private async lease(coordinator: string, digest: string, params: Record<string, string>, signal?: AbortSignal): Promise<Record<string, unknown>> {
    const query = new URLSearchParams({ node: this.deps.self, ...params });
    const res = await this.send(coordinator, 'POST', `${PEER_PATH}/leases/${digest}?${query.toString()}`, undefined, signal);
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new PeerError(`coordinator ${coordinator} answered ${res.statusCode}`, res.statusCode === 401 ? 'refused' : 'bad-answer');
    try {
      return JSON.parse(text) as Record<string, unknown>;
    } catch {
      throw new PeerError(`coordinator ${coordinator} answered with something that is not JSON`, 'bad-answer');
    }
  }

  private async send(peer: string, method: 'GET' | 'POST', path: string, range: string | undefined, signal?: AbortSignal): Promise<Dispatcher.ResponseData> {
    const headers: Record<string, string> = { [PEER_SIGNATURE_HEADER]: this.deps.signer.sign({ method, path, range }) };
    if (range) headers.range = range;
    // The answer deadline is a timer of our own: undici's headersTimeout ticks about once a second, too coarse
    // for a limit of a few hundred milliseconds. It is cleared once headers arrive, so it never cuts a body.
    const answer = new AbortController();
    const timer = setTimeout(() => answer.abort(), this.timeouts.answerMs);
    try {
      const combined = signal ? AbortSignal.any([answer.signal, signal]) : answer.signal;
      return await this.dispatcher.request({ origin: `http://${peer}`, method, path, headers, signal: combined });
    } catch (err) {
      const code = (err as { code?: string }).code;
      const timeout = answer.signal.aborted || err instanceof undiciErrors.ConnectTimeoutError || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_HEADERS_TIMEOUT';
      throw new PeerError(`peer ${peer}: ${timeout ? 'no answer in time' : (err as Error).message}`, timeout ? 'timeout' : 'unreachable');
    } finally {
      clearTimeout(timer);
    }
  }
}

function headerValue(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}
