import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Metrics } from '../../metrics.js';

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
    const path = request.url.split('?')[0] ?? '';
    const route = routeKind(path);
    metrics.httpRequests.labels(route, request.method, String(reply.statusCode)).inc();
    metrics.requestDuration.labels(route, request.method).observe(reply.elapsedTime / 1000);
    if ((route === 'manifest' || route === 'blob') && request.cacheStatus) {
      metrics.cacheResults.labels(route, request.cacheStatus).inc();
      const length = Number(reply.getHeader('content-length'));
      if (request.method === 'GET' && (reply.statusCode === 200 || reply.statusCode === 206) && Number.isFinite(length)) {
        metrics.bytesServed.labels(request.bytesFrom ?? (request.cacheStatus === 'hit' ? 'store' : 'upstream')).inc(length);
      }
    }
    request.log.info(
      {
        method: request.method,
        path,
        ns: (request.query as Record<string, unknown> | undefined)?.ns,
        status: reply.statusCode,
        cache: request.cacheStatus,
        ms: Math.round(reply.elapsedTime),
      },
      'request',
    );
    done();
  });
}
