import Fastify, { LogController, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { lazyChildLogger } from './log.js';
import type { BlobCache } from './cache/blobs.js';
import type { BlobService } from './cache/blob-service.js';
import type { ManifestService } from './cache/manifest-service.js';
import type { ReferrerService } from './cache/referrers.js';
import type { TagService } from './cache/tags.js';
import type { ManifestCache } from './cache/manifests.js';
import type { Config } from './config/load.js';
import { OciError } from './oci/errors.js';
import type { UpstreamClient } from './upstream/client.js';
import type { CredentialHasher } from './policy/credential-hash.js';
import type { TokenService } from './policy/tokens.js';
import type { CredentialVerifier } from './policy/verifier.js';
import { registerTokenRoutes } from './server/routes/token.js';
import type { Metrics } from './metrics.js';
import { pullsView, type UpstreamPulls } from './cache/upstream-pulls.js';
import { sendError } from './server/error-handler.js';
import { registerRequestLog } from './server/plugins/request-log.js';
import { registerDebugRoutes } from './server/routes/debug.js';
import { registerHealthRoutes } from './server/routes/health.js';
import { registerStatusRoutes } from './server/routes/status.js';
import type { StatusReporter } from './cache/status.js';
import { registerV2Routes } from './server/routes/v2.js';
import { urlPath } from './server/url-path.js';

/** Everything the HTTP layer needs, built by services.ts. */
export interface AppDeps {
  config: Config;
  log: Logger;
  blobs: BlobCache;
  manifests: ManifestCache;
  upstream: UpstreamClient;
  verifier: CredentialVerifier;
  blobService: BlobService;
  manifestService: ManifestService;
  tagService: TagService;
  referrerService: ReferrerService;
  tokens: TokenService;
  hasher: CredentialHasher;
  metrics: Metrics;
  pulls: UpstreamPulls;
  status: StatusReporter;
  /** Sharing between nodes, when on (for `/debug/peers`). */
  peers?: { describe(): unknown } | undefined;
  ready: () => Promise<boolean>;
}

/**
 * Builds the registry listener; no I/O happens until `listen`. Debug endpoints never answer here (they name images);
 * /metrics does only when there is no operations listener (`opsSeparately`): its labels name no repository, digest
 * or credential.
 */
export function buildApp(deps: AppDeps, options: { opsSeparately?: boolean } = {}): FastifyInstance {
  const app = Fastify({
    loggerInstance: deps.log,
    // One line per request comes from plugins/request-log.ts, with the cache outcome.
    logController: new LogController({ disableRequestLogging: true }),
    childLoggerFactory: (logger, bindings, options) => lazyChildLogger(logger as Logger, bindings, options),
    // HEAD routes are registered by hand: the automatic one would run the GET handler and read the blob.
    exposeHeadRoutes: false,
    bodyLimit: 64 * 1024,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
  }) as unknown as FastifyInstance;
  app.setErrorHandler((err, request, reply) => sendError(err, request, reply));
  app.setNotFoundHandler((request, reply) =>
    sendError(new OciError('NAME_UNKNOWN', 'not found', { status: 404, detail: { path: urlPath(request.url).slice(0, 200) } }), request, reply),
  );
  registerRequestLog(app, deps.metrics);
  registerHealthRoutes(app, deps.ready);
  if (!options.opsSeparately) registerMetricsRoute(app, deps);
  registerTokenRoutes(app, deps);
  registerV2Routes(app, deps);
  return app;
}

/** The operations listener (`metricsListen`): probes, metrics, debug endpoints and the status page. */
export function buildOpsApp(deps: AppDeps): FastifyInstance {
  const app = Fastify({ loggerInstance: deps.log, logController: new LogController({ disableRequestLogging: true }) }) as unknown as FastifyInstance;
  registerHealthRoutes(app, deps.ready);
  registerMetricsRoute(app, deps);
  registerDebugRoutes(app, {
    pulls: () => pullsView(deps.pulls.limiter, (registry, repository) => deps.verifier.repositoryIsOpen(registry, repository)),
    peers: () => deps.peers?.describe() ?? { enabled: false },
  });
  registerStatusRoutes(app, { status: () => deps.status.report() });
  return app;
}

function registerMetricsRoute(app: FastifyInstance, deps: AppDeps): void {
  app.get('/metrics', async (_request, reply) => {
    const { contentType, body } = await deps.metrics.render();
    return reply.header('content-type', contentType).send(body);
  });
}
