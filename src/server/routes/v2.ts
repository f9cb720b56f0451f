import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Config, RegistryConfig } from '../../config/load.js';
import type { BlobCache } from '../../cache/blobs.js';
import type { ManifestCache } from '../../cache/manifests.js';
import { OciError } from '../../oci/errors.js';
import { MEDIA_TYPES, parseAccept } from '../../oci/media-types.js';
import { parseV2Path, resolveTarget } from '../../oci/path.js';
import { isOciError } from '../../oci/errors.js';
import type { CredentialHasher } from '../../policy/credential-hash.js';
import type { TokenService } from '../../policy/tokens.js';
import type { Access, CredentialVerifier } from '../../policy/verifier.js';
import { drain, type UpstreamClient, type UpstreamResponse } from '../../upstream/client.js';
import { errorForBodyFailure, errorForUpstreamStatus } from '../../upstream/errors.js';
import { header, type BlobAnswer } from '../../cache/blobs.js';
import type { ManifestAnswer, ManifestRequest } from '../../cache/manifests.js';
import { challengeFor, identify } from '../client-auth.js';
import { parseRange } from '../range.js';

/** What the v2 routes need. */
export interface V2Deps {
  config: Config;
  blobs: BlobCache;
  manifests: ManifestCache;
  upstream: UpstreamClient;
  verifier: CredentialVerifier;
  tokens: TokenService;
  hasher: CredentialHasher;
}

const API_VERSION = { 'docker-distribution-api-version': 'registry/2.0' };
const MAX_PASSTHROUGH_BYTES = 16 * 1024 * 1024;

/** The OCI distribution pull API under `/v2/`. HEAD is handled explicitly: a HEAD never reads a blob body. */
export function registerV2Routes(app: FastifyInstance, deps: V2Deps): void {
  const known = new Set(deps.config.registries.keys());

  const handler = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const path = request.url.split('?')[0] ?? '';
    const rest = path.replace(/^\/v2\/?/, '');
    const route = parseV2Path(rest);
    const query = request.query as Record<string, string | undefined>;
    const head = request.method === 'HEAD';
    const ns = typeof query.ns === 'string' ? query.ns : undefined;
    if (route.kind === 'base') {
      // Clients such as skopeo learn the auth scheme from this ping; they send credentials only after a challenge.
      const identity = identify(request, undefined, deps, () => challengeFor(request, undefined, ns));
      if (identity.kind === 'none' && deps.verifier.policy !== 'NeverVerify') throw challengeFor(request, undefined, ns);
      reply.headers({ ...API_VERSION, 'content-type': 'application/json' });
      await reply.code(200).send(head ? undefined : Buffer.from('{}'));
      return;
    }
    const target = resolveTarget(route.name, ns, known, deps.config.defaultRegistry);
    const registry = deps.config.registries.get(target.registry) as RegistryConfig;
    const challenge = (): OciError => challengeFor(request, route.name, ns);
    const access: Access = { registry, repository: target.repository, identity: identify(request, target, deps, challenge), challenge };
    switch (route.kind) {
      case 'manifest':
        return serveManifest(deps, request, reply, access, route.reference, route.isDigest);
      case 'blob':
        return serveBlob(deps, request, reply, access, route.digest);
      case 'tags':
        if (head) throw new OciError('UNSUPPORTED', 'HEAD is not supported on tags/list', { status: 405 });
        return serveTags(deps, request, reply, access, query);
      case 'referrers':
        if (head) throw new OciError('UNSUPPORTED', 'HEAD is not supported on referrers', { status: 405 });
        return serveReferrers(deps, request, reply, access, route.digest, query);
    }
  };

  app.route({ method: ['HEAD', 'GET'], url: '/v2', handler });
  app.route({ method: ['HEAD', 'GET'], url: '/v2/*', handler });
  const refuseWrite = async (): Promise<never> => {
    throw new OciError('UNSUPPORTED', 'registry-cache is a pull-only mirror');
  };
  app.route({
    method: ['POST', 'PUT', 'PATCH', 'DELETE'],
    url: '/v2/*',
    // Refused in onRequest, before the body is parsed: a manifest content type would otherwise get the parser's 415.
    onRequest: refuseWrite,
    handler: refuseWrite,
  });
}

async function serveManifest(
  deps: V2Deps,
  request: FastifyRequest,
  reply: FastifyReply,
  access: Access,
  reference: string,
  isDigest: boolean,
): Promise<void> {
  const { registry, repository } = access;
  const method = request.method === 'HEAD' ? 'HEAD' : 'GET';
  const base = { registry, repository, reference, isDigest, accept: parseAccept(request.headers.accept), method } as const;
  let answer: ManifestAnswer;
  if (isDigest) {
    answer = await manifestByDigest(deps, access, base);
  } else {
    try {
      const { value, puller } = await deps.verifier.tryUpstream(access, (credential) => deps.manifests.get({ ...base, ...(credential ? { credential } : {}) }));
      answer = value;
      // An upstream that just answered for these credentials verified them; a stored or stale answer did not.
      if (answer.source === 'upstream' || answer.source === 'revalidated') deps.verifier.record(access, answer.digest, puller);
      else if (!deps.verifier.allowedLocally(access, answer.digest)) {
        // A client without access gets what it would get for a tag the cache does not know: the upstream failure the
        // stale answer stands in for, or the upstream's own answer.
        if (answer.upstreamError) throw answer.upstreamError;
        answer = await manifestByDigest(deps, access, { ...base, reference: answer.digest, isDigest: true });
      }
    } catch (err) {
      // A refused tag revalidation: what the store holds may still be this client's under the policy.
      const refused = isOciError(err) && (err.code === 'UNAUTHORIZED' || err.code === 'DENIED');
      const knownDigest = refused ? deps.manifests.lastKnownDigest(registry.host, repository, reference) : undefined;
      if (!knownDigest || !deps.verifier.allowedLocally(access, knownDigest)) throw err;
      answer = await deps.manifests.get({ ...base, reference: knownDigest, isDigest: true });
    }
  }
  deps.manifests.noteServed(registry.host, repository, answer.digest);
  request.cacheStatus = answer.source === 'store' ? 'hit' : answer.source === 'upstream' ? 'miss' : answer.source;
  reply.code(200).headers({
    ...API_VERSION,
    'content-type': answer.mediaType,
    'content-length': String(answer.size),
    'docker-content-digest': answer.digest,
    etag: `"${answer.digest}"`,
  });
  await reply.send(method === 'HEAD' ? undefined : answer.bytes);
}

/**
 * A manifest by digest: from the store for a client a record allows; for anyone else the upstream GET by digest a
 * miss makes, whether or not it is stored (its hashed body proves possession and the credential's access).
 */
async function manifestByDigest(deps: V2Deps, access: Access, req: Omit<ManifestRequest, 'credential'>): Promise<ManifestAnswer> {
  if (deps.manifests.isStored(req.reference) && deps.verifier.allowedLocally(access, req.reference)) {
    deps.verifier.noteLocal();
    return deps.manifests.get(req);
  }
  const { value, puller } = await deps.verifier.prove(access, (credential) => deps.manifests.fetchByDigest({ ...req, ...(credential ? { credential } : {}) }));
  deps.verifier.record(access, value.digest, puller);
  return value;
}

async function serveBlob(
  deps: V2Deps,
  request: FastifyRequest,
  reply: FastifyReply,
  access: Access,
  digest: string,
): Promise<void> {
  const blobRequest = { registry: access.registry, repository: access.repository, digest };
  const allowance = deps.verifier.blobAccess(access, digest);
  const common = {
    ...API_VERSION,
    'content-type': 'application/octet-stream',
    'docker-content-digest': digest,
    'accept-ranges': 'bytes',
    etag: `"${digest}"`,
    'cache-control': 'max-age=31536000, immutable',
  };
  if (request.method === 'HEAD') {
    // A client no record allows gets the upstream's answer to it, never the store's: a HEAD hands over no bytes and
    // proves nothing, so it records nothing.
    const { value: head } = await deps.verifier.tryUpstream(access, (credential) =>
      deps.blobs.head({ ...blobRequest, ...(credential ? { credential } : {}) }, { upstreamOnly: !allowance.allowed }),
    );
    const { size, source } = head;
    request.cacheStatus = source === 'store' ? 'hit' : source === 'upstream' ? 'miss' : source;
    reply.code(200).headers(common);
    if (size !== undefined) reply.header('content-length', String(size));
    await reply.send();
    return;
  }
  let answer: BlobAnswer | undefined;
  if (!allowance.allowed && allowance.parent) {
    // The blob came through this repository: the client proves itself for a manifest here that references it, a GET
    // by digest accounted as this blob request (its back-off, its error codes), as a miss of the blob would be.
    const parent: ManifestRequest = { ...blobRequest, reference: allowance.parent, isDigest: true, accept: [], method: 'HEAD' };
    const { puller } = await deps.verifier.prove(access, (credential) => deps.manifests.fetchByDigest({ ...parent, ...(credential ? { credential } : {}) }, { digest }));
    deps.verifier.record(access, allowance.parent, puller);
  } else if (!allowance.allowed) {
    // Nothing here vouches for the blob: the client's own upstream GET is the check, and its hashed body the proof.
    const own = await deps.verifier.prove(access, (credential) => deps.blobs.fetchAsProof({ ...blobRequest, ...(credential ? { credential } : {}) }));
    answer = own.value;
    answer.committed?.then(() => deps.verifier.record(access, digest, own.puller)).catch(() => undefined);
  }
  answer ??= deps.blobs.stored(digest);
  answer ??= (await deps.verifier.tryUpstream(access, (credential) => deps.blobs.get({ ...blobRequest, ...(credential ? { credential } : {}) }))).value;
  request.cacheStatus = answer.source === 'store' ? 'hit' : answer.source === 'upstream' ? 'miss' : answer.source;
  const rangeHeader = header(request.headers.range);
  // Without a size known to be true, a range (its bounds, its total, a 416) waits for the fill to verify one.
  const size = answer.size ?? (rangeHeader ? await answer.verifiedSize() : undefined);
  const range = size === undefined ? undefined : parseRange(rangeHeader, size);
  if (range) {
    reply.code(206).headers({
      ...common,
      'content-length': String(range.end - range.start + 1),
      'content-range': `bytes ${range.start}-${range.end}/${size}`,
    });
    await reply.send(answer.open(range.start, range.end));
    return;
  }
  reply.code(200).headers(common);
  if (answer.size !== undefined) reply.header('content-length', String(answer.size));
  await reply.send(answer.open());
}

async function serveTags(
  deps: V2Deps,
  request: FastifyRequest,
  reply: FastifyReply,
  access: Access,
  query: Record<string, string | undefined>,
): Promise<void> {
  const { registry, repository } = access;
  const upstreamQuery: Record<string, string> = {};
  if (query.n !== undefined) {
    if (!/^\d{1,6}$/.test(query.n)) throw new OciError('UNSUPPORTED', 'n must be a non-negative integer', { status: 400 });
    upstreamQuery.n = query.n;
  }
  if (query.last !== undefined) upstreamQuery.last = query.last;
  const { value: res } = await deps.verifier.tryUpstream(access, async (credential) => {
    const r = await deps.upstream.send({
      registry,
      method: 'GET',
      path: `/v2/${repository}/tags/list`,
      query: upstreamQuery,
      headers: { accept: 'application/json' },
      repository,
      ...(credential ? { credential } : {}),
    });
    return expectStatus(r, [200], 'tags', registry.host);
  });
  request.cacheStatus = 'passthrough';
  const body = await readCapped(res.body, registry.host);
  reply.code(200).headers({ ...API_VERSION, 'content-type': 'application/json' });
  const page = paginateTags(body, upstreamQuery.n === undefined ? undefined : Number(upstreamQuery.n), upstreamQuery.last);
  const link = page?.next === undefined ? rewriteLink(header(res.headers.link), request, query.ns) : nextLink(request, { n: upstreamQuery.n ?? '', last: page.next }, query.ns);
  if (link) reply.header('link', link);
  await reply.send(page?.body ?? body);
}

/**
 * Applies `n` and `last` to a tag list whose upstream ignored them (distribution 2.8 does); a list the upstream
 * already paged passes unchanged. `next` is the last tag of a page this cache cut short. Undefined: send as is.
 */
function paginateTags(body: Buffer, n: number | undefined, last: string | undefined): { body: Buffer; next?: string } | undefined {
  if (n === undefined && last === undefined) return undefined;
  let list: { name?: unknown; tags?: unknown };
  try {
    list = JSON.parse(body.toString('utf8')) as { name?: unknown; tags?: unknown };
  } catch {
    return undefined;
  }
  if (!Array.isArray(list.tags) || !list.tags.every((t): t is string => typeof t === 'string')) return undefined;
  // The spec's order for paging is lexical; `last` means "after this tag" in that order.
  let tags = [...list.tags].sort();
  if (last !== undefined) tags = tags.filter((t) => t > last);
  let next: string | undefined;
  if (n !== undefined && tags.length > n) {
    tags = tags.slice(0, n);
    next = tags.at(-1);
  }
  return { body: Buffer.from(JSON.stringify({ ...list, tags })), ...(next !== undefined ? { next } : {}) };
}

async function serveReferrers(
  deps: V2Deps,
  request: FastifyRequest,
  reply: FastifyReply,
  access: Access,
  digest: string,
  query: Record<string, string | undefined>,
): Promise<void> {
  const { registry, repository } = access;
  const upstreamQuery: Record<string, string> = {};
  if (query.artifactType !== undefined) upstreamQuery.artifactType = query.artifactType;
  // Registries without the referrers API answer 404/405/400: per the spec the answer is then an empty index.
  const { value: res } = await deps.verifier.tryUpstream(access, async (credential) => {
    const r = await deps.upstream.send({
      registry,
      method: 'GET',
      path: `/v2/${repository}/referrers/${digest}`,
      query: upstreamQuery,
      headers: { accept: MEDIA_TYPES.ociIndex },
      repository,
      ...(credential ? { credential } : {}),
    });
    return expectStatus(r, [200, 400, 404, 405], 'referrers', registry.host);
  });
  request.cacheStatus = 'passthrough';
  reply.headers({ ...API_VERSION, 'content-type': MEDIA_TYPES.ociIndex });
  if (res.status === 200) {
    const body = await readCapped(res.body, registry.host);
    const filtered = header(res.headers['oci-filters-applied']);
    if (filtered) reply.header('oci-filters-applied', filtered);
    await reply.code(200).send(body);
    return;
  }
  await drain(res.body);
  await reply.code(200).send(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: [] })));
}

/** Passes through an upstream answer with an expected status; anything else becomes its OCI error. */
async function expectStatus(res: UpstreamResponse, ok: number[], subject: 'tags' | 'referrers', registry: string): Promise<UpstreamResponse> {
  if (ok.includes(res.status)) return res;
  await drain(res.body);
  throw errorForUpstreamStatus(res.status, subject, registry, header(res.headers['retry-after']));
}

async function readCapped(body: AsyncIterable<Buffer> & { destroy(): void }, registry: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of body) {
      total += chunk.length;
      if (total > MAX_PASSTHROUGH_BYTES) {
        body.destroy();
        throw new OciError('UNKNOWN', 'upstream response too large', { status: 502 });
      }
      chunks.push(chunk);
    }
  } catch (err) {
    throw errorForBodyFailure(err, registry);
  }
  return Buffer.concat(chunks);
}

/** Points a pagination Link at this cache (same path, same ns) instead of the upstream. */
function rewriteLink(link: string | undefined, request: FastifyRequest, ns: string | undefined): string | undefined {
  if (!link) return undefined;
  const m = /<([^>]+)>/.exec(link);
  if (!m) return undefined;
  const next = new URL(m[1] as string, 'http://upstream.invalid');
  const params: Record<string, string> = {};
  for (const key of ['n', 'last']) {
    const v = next.searchParams.get(key);
    if (v !== null) params[key] = v;
  }
  return nextLink(request, params, ns);
}

/** A `rel="next"` Link to this cache's own path with these paging parameters (and the same ns). */
function nextLink(request: FastifyRequest, paging: Record<string, string>, ns: string | undefined): string {
  const params = new URLSearchParams();
  for (const [key, v] of Object.entries(paging)) if (v !== '') params.set(key, v);
  if (ns) params.set('ns', ns);
  return `<${request.url.split('?')[0]}?${params.toString()}>; rel="next"`;
}
