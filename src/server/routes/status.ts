import type { FastifyInstance } from 'fastify';
import type { StatusReport } from '../../cache/status.js';
import { STATUS_PAGE_CSP, renderStatusPage } from '../status-page.js';

/**
 * The status page and its machine-readable twin, for the operations listener only: they name repositories (those
 * every pod on the node may pull), never credentials.
 */
export function registerStatusRoutes(app: FastifyInstance, deps: { status: () => Promise<StatusReport> }): void {
  app.get('/status.json', async (_request, reply) => reply.header('cache-control', 'no-store').send(await deps.status()));
  app.get('/status', async (_request, reply) =>
    reply
      .header('content-type', 'text/html; charset=utf-8')
      .header('cache-control', 'no-store')
      .header('content-security-policy', STATUS_PAGE_CSP)
      .header('x-content-type-options', 'nosniff')
      .send(renderStatusPage(await deps.status())),
  );
}
