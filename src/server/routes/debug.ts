import { createHash, randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { imageOfKey } from '../../cache/upstream-pulls.js';
import type { PullLimiter } from '../../limiter/pull-limiter.js';

/** Process-local salt: an opaque name must not be a dictionary-reversible hash of a repository name. */
const SALT = randomBytes(16);

/**
 * Debug endpoints, for the operations listener only. `/debug/pulls` shows what the parallel-pull limit is doing; it
 * names a repository only when anyone on the node may pull from it (`isOpen`), and otherwise shows the registry and
 * an opaque, per-process stable label, never the repository, tag or digest.
 */
export function registerDebugRoutes(app: FastifyInstance, deps: { limiter: PullLimiter; isOpen: (registry: string, repository: string) => boolean }): void {
  const describe = (key: string): string => {
    const image = imageOfKey(key);
    if (image && deps.isOpen(image.registry, image.repository)) return key;
    const label = createHash('sha256').update(SALT).update(image?.repository ?? key).digest('hex').slice(0, 12);
    return `${image?.registry ?? '?'}/(private ${label})`;
  };
  app.get('/debug/pulls', async () => {
    const state = deps.limiter.state();
    return {
      ...state,
      active: state.active.map((p) => ({ ...p, keys: [...new Set(p.keys.map(describe))] })),
      queued: state.queued.map((p) => ({ ...p, keys: [...new Set(p.keys.map(describe))] })),
    };
  });
}
