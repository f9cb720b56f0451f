import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Metrics } from '../../metrics.js';
import { urlPath } from '../url-path.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** How the cache answered: hit (store), miss (upstream), inflight (joined a running fill), revalidated, stale. */
    cacheStatus: string | undefined;
    /** Where a blob body's bytes came from (store, upstream, peer), when the service said. */
    bytesFrom: string | undefined;
  }
}

/** A bounded label for a request path: the API operation, never the repository or digest. */
export function routeKind(path: string): string {
  if (path === '/v2' || path === '/v2/') return 'base';
  const m = /^\/v2\/.+\/(manifests|blobs|tags|referrers)\//.exec(path);
  if (m) return m[1] === 'manifests' ? 'manifest' : m[1] === 'blobs' ? 'blob' : (m[1] as string);
  if (path === '/auth/token') return 'token';
  if (path === '/healthz' || path === '/readyz') return 'health';
  if (path === '/metrics') return 'metrics';
  return 'other';
}

/** One log line and the metrics per request, with the cache outcome; never headers (they carry credentials). */
export function registerRequestLog(app: FastifyInstance, metrics: Metrics): void {
  app.decorateRequest('cacheStatus', undefined);
  app.decorateRequest('bytesFrom', undefined);
  // A callback hook, not an async one: fastify then skips a promise and its microtask on every request.
  app.addHook('onResponse', (request: FastifyRequest, reply, done) => {
    const { url, method } = request;
    const path = urlPath(url);
    const route = routeKind(path);
    const ms = reply.elapsedTime;
    // Tallies, added to the counters when they are read: prom-client's inc hashes and validates a label object per call.
    const status = reply.statusCode;
    metrics.requestCounts.add(1, route, method, String(status));
    metrics.requestDuration.observe({ route, method }, ms / 1000);
    const cacheStatus = request.cacheStatus;
    if ((route === 'manifest' || route === 'blob') && cacheStatus) {
      metrics.cacheResultCounts.add(1, route, cacheStatus);
      const length = Number(reply.getHeader('content-length'));
      if (method === 'GET' && (status === 200 || status === 206) && Number.isFinite(length)) {
        const source = request.bytesFrom ?? (cacheStatus === 'hit' ? 'store' : 'upstream');
        metrics.bytesServedCounts.add(length, source);
      }
    }
    request.log.info(
      {
        method,
        path,
        ns: (request.query as Record<string, unknown> | undefined)?.ns,
        status: reply.statusCode,
        cache: request.cacheStatus,
        ms: Math.round(ms),
      },
      'request',
    );
    done();
  });
}
