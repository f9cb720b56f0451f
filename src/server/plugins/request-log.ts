import type { FastifyInstance, FastifyRequest } from 'fastify';

declare module 'fastify' {
  interface FastifyRequest {
    /** How the cache answered: hit (store), miss (upstream), inflight (joined a running fill), revalidated, stale. */
    cacheStatus: string | undefined;
  }
}

/** One log line per request, with the cache outcome; never headers (they carry credentials). */
export function registerRequestLog(app: FastifyInstance): void {
  app.decorateRequest('cacheStatus', undefined);
  app.addHook('onResponse', async (request: FastifyRequest, reply) => {
    request.log.info(
      {
        method: request.method,
        path: request.url.split('?')[0],
        ns: (request.query as Record<string, unknown> | undefined)?.ns,
        status: reply.statusCode,
        cache: request.cacheStatus,
        ms: Math.round(reply.elapsedTime),
      },
      'request',
    );
  });
}
