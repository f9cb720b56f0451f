import type { FastifyInstance } from 'fastify';

/**
 * Debug endpoints, for the operations listener only. `/debug/pulls` shows what the parallel-pull limit is doing, as
 * the cache describes it (repositories named only where anyone on the node may pull them).
 */
export function registerDebugRoutes(app: FastifyInstance, deps: { pulls: () => unknown }): void {
  app.get('/debug/pulls', async () => deps.pulls());
}
