import type { FastifyInstance } from 'fastify';

/**
 * Debug endpoints, for the operations listener only. `/debug/pulls` shows what the parallel-pull limit is doing, as
 * the cache describes it (repositories named only where anyone on the node may pull them).
 */
export function registerDebugRoutes(app: FastifyInstance, deps: { pulls: () => unknown; peers: () => unknown }): void {
  app.get('/debug/pulls', async () => deps.pulls());
  // Members, their state, peers skipped after a failure, recent failures (digests, no repository) and leases.
  app.get('/debug/peers', async () => deps.peers());
}
