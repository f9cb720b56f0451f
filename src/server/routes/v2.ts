import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Config, RegistryConfig } from '../../config/load.js';
import type { BlobService } from '../../cache/blob-service.js';
import type { ManifestService } from '../../cache/manifest-service.js';
import type { ReferrerService } from '../../cache/referrers.js';
import type { CacheReply } from '../../cache/reply.js';
import type { TagService } from '../../cache/tags.js';
import { API_VERSION_HEADERS, firstHeader } from '../../oci/content-headers.js';
import { OciError } from '../../oci/errors.js';
import { parseAccept } from '../../oci/media-types.js';
import { parseV2Path, resolveTarget } from '../../oci/path.js';
import { challengeFor, clientAccess, identify, type ClientAuthDeps } from '../client-auth.js';
import { urlPath } from '../url-path.js';

/** What the v2 routes need: one pull-through service per kind of object, and the client's authentication. */
export interface V2Deps extends ClientAuthDeps {
  config: Config;
  blobService: BlobService;
  manifestService: ManifestService;
  tagService: TagService;
  referrerService: ReferrerService;
}

/**
 * The OCI distribution pull API under `/v2/`: parse the path, ask one service, write its answer. HEAD is handled
 * explicitly: a HEAD never reads a blob body.
 */
export function registerV2Routes(app: FastifyInstance, deps: V2Deps): void {
  const known = new Set(deps.config.registries.keys());

  const handler = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const route = parseV2Path(afterV2(request.url));
    const query = request.query as Record<string, string | string[] | undefined>;
    const method = request.method === 'HEAD' ? 'HEAD' : 'GET';
    const ns = singleNs(query.ns);
    if (route.kind === 'base') {
      // Clients such as skopeo learn the auth scheme from this ping; they send credentials only after a challenge.
      const identity = identify(request, undefined, deps, () => challengeFor(request, undefined, ns));
      if (identity.kind === 'none' && deps.config.imagePullCredentialsVerificationPolicy !== 'NeverVerify') throw challengeFor(request, undefined, ns);
      reply.headers({ ...API_VERSION_HEADERS, 'content-type': 'application/json' });
      await reply.code(200).send(method === 'HEAD' ? undefined : Buffer.from('{}'));
      return;
    }
    const target = resolveTarget(route.name, ns, known, deps.config.defaultRegistry);
    const access = clientAccess(request, { name: route.name, ns }, target, deps.config.registries.get(target.registry) as RegistryConfig, deps);
    let answer: CacheReply;
    switch (route.kind) {
      case 'manifest':
        answer = await deps.manifestService.manifest(access, route.reference, route.isDigest, { method, accept: parseAccept(request.headers.accept) });
        break;
      case 'blob':
        answer = await deps.blobService.blob(access, route.digest, { method, range: firstHeader(request.headers.range), signal: clientGone(reply) });
        break;
      case 'tags':
        if (method === 'HEAD') throw new OciError('UNSUPPORTED', 'HEAD is not supported on tags/list', { status: 405 });
        answer = await deps.tagService.tags(access, { n: single(query.n, 'n'), last: single(query.last, 'last'), selfPath: urlPath(request.url), ns, signal: clientGone(reply) });
        break;
      case 'referrers':
        if (method === 'HEAD') throw new OciError('UNSUPPORTED', 'HEAD is not supported on referrers', { status: 405 });
        answer = await deps.referrerService.referrers(access, route.digest, { artifactType: single(query.artifactType, 'artifactType'), signal: clientGone(reply) });
        break;
    }
    request.cacheStatus = answer.cacheStatus;
    request.bytesFrom = answer.bytesFrom;
    reply.code(answer.status).headers(answer.headers);
    await reply.send(method === 'HEAD' ? undefined : answer.body);
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

/** The path after `/v2/` (or `/v2`), without the query string: what `parseV2Path` reads. */
function afterV2(url: string): string {
  const path = urlPath(url);
  if (!path.startsWith('/v2')) return path;
  return path.charCodeAt(3) === 47 /* '/' */ ? path.slice(4) : path.slice(3);
}

/**
 * Aborted when the client goes away before its answer is complete: upstream calls made for it alone stop. Made only
 * for the routes that take it (a listener and a controller per request were a cost on every manifest hit).
 */
function clientGone(reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) controller.abort(new Error('client disconnected'));
  });
  return controller.signal;
}

/**
 * containerd's `ns=`, given once. A repeated parameter is refused, never read as absent: absent routes to the default
 * registry, which would then receive credentials the client meant for the named one.
 */
export function singleNs(value: string | string[] | undefined): string | undefined {
  return single(value, 'ns');
}

function single(value: string | string[] | undefined, name: string): string | undefined {
  if (Array.isArray(value)) throw new OciError('UNSUPPORTED', `query parameter ${name} may be given once`, { status: 400 });
  return value;
}
