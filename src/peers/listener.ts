import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import type { ClaimAnswer, DigestCoordinator, FillOutcome } from './coordinator.js';
import { PEER_SIGNATURE_HEADER, type PeerSigner } from './signature.js';

/** Prefix of every peer path; the peer listener serves nothing else. */
export const PEER_PATH = '/peer/v1';
const DIGEST = /^sha256:[a-f0-9]{64}$/;
const MAX_PEER_CONNECTIONS = 256;

/** A blob this node can hand a peer: complete or still filling. */
export interface SharedBlob {
  /** Known only when verified (stored) or promised by a stored manifest's descriptor. */
  size: number | undefined;
  /** Streams `[start, end]` inclusive (end omitted: to the end). */
  open(start: number, end?: number): Readable;
}

/**
 * What the peer listener may serve. The cache implements it and alone decides which blobs are shareable (by
 * default only content that needs no tenant credential): the listener knows nothing of policy or records. A fill
 * must be findable from before it asks the cluster for a lease, so a node pointed at it never gets a 404.
 */
export interface SharedBlobs {
  find(digest: string, scope?: ShareScope): SharedBlob | undefined;
}

/** What a reading node needs: a fill in progress only from its registry; with `openOnly`, no opt-in private content. */
export interface ShareScope {
  /** The registry the reader fetches from (a running fill of another registry is not offered). */
  registry?: string | undefined;
  /** Only content fetched without a tenant credential, whatever peerSharePrivateLayers says. */
  openOnly?: boolean;
}

/** The peer listener's parts. */
export interface PeerListenerDeps {
  signer: PeerSigner;
  coordinator: DigestCoordinator;
  blobs: SharedBlobs;
  /** Whether `member` is a live peer (ready on the ring), for the coordinator's answers. */
  isLive: (member: string) => boolean;
  log: Logger;
  onRefused?: (reason: string) => void;
}

/**
 * The listener other nodes talk to (`peerListen`): coordinator calls and blob reads by digest, each signed. It
 * never triggers an upstream request and serves no manifest, tag or record; unsigned requests get 401 and nothing
 * more, unknown paths 404.
 */
export function buildPeerListener(deps: PeerListenerDeps): FastifyInstance {
  const app = Fastify({
    loggerInstance: deps.log,
    logController: new LogController({ disableRequestLogging: true }),
    exposeHeadRoutes: false,
    bodyLimit: 1024,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
  }) as unknown as FastifyInstance;
  // Every blob read holds a file open: a bound keeps a peer (or a secret holder) from taking all of them.
  app.server.maxConnections = MAX_PEER_CONNECTIONS;
  app.addHook('onRequest', async (request, reply) => {
    const verdict = deps.signer.verify(
      { method: request.method, path: request.url, range: headerOf(request, 'range') },
      headerOf(request, PEER_SIGNATURE_HEADER),
    );
    if (verdict !== 'ok') {
      deps.onRefused?.(verdict);
      await reply.code(401).header('content-type', 'application/json').send(errorBody('UNAUTHORIZED', 'peer signature required'));
    }
  });
  app.setNotFoundHandler(async (_request, reply) => reply.code(404).header('content-type', 'application/json').send(errorBody('NOT_FOUND', 'not a peer path')));

  app.post(`${PEER_PATH}/leases/:digest`, async (request, reply) => {
    const digest = digestParam(request);
    const q = request.query as Record<string, string | undefined>;
    const node = q.node;
    const registry = q.registry ?? '';
    if (!digest || !node) return reply.code(400).send(errorBody('INVALID', 'digest and node required'));
    // Only members may hold leases or be named holders: a secret holder cannot point others at any address.
    if (!deps.isLive(node)) return reply.code(403).send(errorBody('DENIED', 'not a live member'));
    const c = deps.coordinator;
    switch (q.op) {
      case 'claim': {
        const answer: ClaimAnswer = c.claim(digest, node, deps.isLive, (q.avoid ?? '').split(',').filter(Boolean), registry);
        return reply.send(answer);
      }
      case 'renew':
        return reply.send({ renewed: c.renew(digest, node, registry) });
      case 'release':
        if (q.outcome !== 'committed' && q.outcome !== 'failed') return reply.code(400).send(errorBody('INVALID', 'outcome must be committed or failed'));
        c.release(digest, node, q.outcome as FillOutcome, registry);
        return reply.send({});
      case 'drop':
        if (!q.source) return reply.code(400).send(errorBody('INVALID', 'source required'));
        c.dropHolder(digest, q.source);
        return reply.send({});
      default:
        return reply.code(400).send(errorBody('INVALID', 'op must be claim, renew, release or drop'));
    }
  });

  const serveBlob = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const digest = digestParam(request);
    const q = request.query as Record<string, string | undefined>;
    const blob = digest ? deps.blobs.find(digest, { registry: q.registry, openOnly: q.open === '1' }) : undefined;
    if (!digest || !blob) {
      await reply.code(404).header('content-type', 'application/json').send(errorBody('BLOB_UNKNOWN', 'not shared by this node'));
      return;
    }
    const range = parseOpenRange(headerOf(request, 'range'));
    if (range === 'invalid') {
      await reply.code(416).send();
      return;
    }
    const start = range?.start ?? 0;
    const end = range?.end ?? (blob.size === undefined ? undefined : blob.size - 1);
    if (blob.size !== undefined && (start >= blob.size || (end !== undefined && end < start))) {
      await reply.code(416).header('content-range', `bytes */${blob.size}`).send();
      return;
    }
    reply.header('docker-content-digest', digest).header('accept-ranges', 'bytes').header('content-type', 'application/octet-stream');
    if (end !== undefined) reply.header('content-length', String(end - start + 1));
    if (range) reply.code(206).header('content-range', `bytes ${start}-${end ?? '*'}/${blob.size ?? '*'}`);
    else reply.code(200);
    if (request.method === 'HEAD') {
      await reply.send();
      return;
    }
    // Headers go out at once, before the first byte: a fill may not have one yet, and the reader's answer
    // timeout is short on purpose. The body follows as it grows; an error mid-body cuts the connection.
    reply.hijack();
    reply.raw.writeHead(reply.statusCode, reply.getHeaders() as Record<string, string>);
    reply.raw.flushHeaders();
    await pipeline(blob.open(start, end), reply.raw).catch(() => reply.raw.destroy());
  };
  app.head(`${PEER_PATH}/blobs/:digest`, serveBlob);
  app.get(`${PEER_PATH}/blobs/:digest`, serveBlob);
  return app;
}

function digestParam(request: FastifyRequest): string | undefined {
  const d = (request.params as { digest?: string }).digest;
  return d !== undefined && DIGEST.test(d) ? d : undefined;
}

function headerOf(request: FastifyRequest, name: string): string | undefined {
  const v = request.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** `bytes=N-` or `bytes=N-M`; peers ask only for what they still lack, never suffixes or several ranges. */
function parseOpenRange(header: string | undefined): { start: number; end: number | undefined } | undefined | 'invalid' {
  if (header === undefined) return undefined;
  const m = /^bytes=(\d{1,15})-(\d{1,15})?$/.exec(header);
  if (!m) return 'invalid';
  return { start: Number(m[1]), end: m[2] === undefined ? undefined : Number(m[2]) };
}

function errorBody(code: string, message: string): string {
  return JSON.stringify({ errors: [{ code, message }] });
}
