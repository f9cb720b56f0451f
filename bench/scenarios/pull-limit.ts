import { pullImage } from '../clients.js';
import { startCountingProxy } from '../counting-proxy.js';
import { RowSet, type SystemName } from '../results.js';
import type { Scenario } from '../scenario.js';
import { formatBytes } from '../settings.js';
import { startPeer, type ManagedServer } from '../systems.js';
import { secondsSince } from '../stats.js';

/** The registry-cache settings compared; `null` is the kubelet's "no limit". */
const SETTINGS: Array<{ system: SystemName; config: Record<string, unknown> }> = [
  { system: 'rc serialize (1)', config: { serializeImagePulls: true } },
  { system: 'rc max 3', config: { serializeImagePulls: false, maxParallelImagePulls: 3 } },
  { system: 'rc unlimited', config: { serializeImagePulls: false, maxParallelImagePulls: null } },
];

/**
 * The parallel-pull limit: 20 different cold images pulled at once through registry-cache with
 * serializeImagePulls / maxParallelImagePulls 1, 3 and unlimited; wall time and the upstream concurrency the counting
 * proxy saw. Skips itself when the cache does not know the keys yet ("unknown key" at start).
 */
export const pullLimit: Scenario = {
  id: 'pull-limit',
  number: '8',
  aliases: ['parallel-pull-limit', 'pulls'],
  title: 'Parallel-pull limit (extra, no target)',
  // Opt-in (`--scenario pull-limit` or `all`) until the limiter has landed in src/.
  inDefaultRun: false,
  async run(ctx) {
    const p = ctx.settings.pullLimit;
    const images = ctx.images.pullLimit;
    if (images.length === 0) throw new Error('pull-limit images were not synthesized');
    const rows = new RowSet();
    const notes: string[] = [];
    const targets: Array<{ system: SystemName; start: (proxyUrl: string) => Promise<ManagedServer> }> = [
      ...SETTINGS.map((s) => ({
        system: s.system,
        start: (proxyUrl: string) =>
          ctx.startCacheVariant(`rc-${s.system.replace(/[^a-z0-9]+/gi, '-')}`, { upstreamUrl: proxyUrl, config: { ...s.config, pullQueueTimeout: '5m' } }),
      })),
      { system: 'peer', start: (proxyUrl: string) => startPeer({ name: 'peer-pull-limit', remoteUrl: proxyUrl }, ctx.teardown) },
    ];
    for (let rep = 0; rep < p.reps; rep++) {
      for (const t of targets) {
        const proxy = await startCountingProxy(ctx.upstream.url, ctx.teardown);
        try {
          const server = await t.start(proxy.url);
          try {
            proxy.reset();
            const start = process.hrtime.bigint();
            const results = await Promise.allSettled(images.map((img) => pullImage(server.url, img.repo, img.tag, { concurrency: p.concurrency })));
            const seconds = secondsSince(start);
            const failed = results.filter((r) => r.status === 'rejected');
            for (const f of failed) if (notes.length < 6 && f.status === 'rejected') notes.push(`${t.system}: ${f.reason instanceof Error ? f.reason.message : String(f.reason)}`);
            const counts = proxy.counts();
            rows.add('pl-wall', { label: `${images.length} cold images at once: wall time`, unit: 'ms', better: 'lower', digits: 0 }, t.system, seconds * 1000);
            rows.add('pl-peak-images', { label: 'peak images (repositories) in flight upstream', unit: 'count', better: 'none', digits: 0 }, t.system, counts.peakRepositoriesInFlight);
            rows.add('pl-peak-requests', { label: 'peak requests in flight upstream', unit: 'count', better: 'none', digits: 0 }, t.system, counts.peakInFlight);
            rows.add('pl-upstream-requests', { label: 'upstream requests', unit: 'count', better: 'lower', digits: 0 }, t.system, counts.total);
            rows.add('pl-failed', { label: 'failed pulls', unit: 'count', better: 'lower', digits: 0 }, t.system, failed.length);
            ctx.log(`  ${t.system}: ${(seconds * 1000).toFixed(0)} ms, peak images ${counts.peakRepositoriesInFlight}, peak requests ${counts.peakInFlight}, failed ${failed.length}`);
          } finally {
            await server.destroy();
          }
        } finally {
          await proxy.close();
        }
      }
    }
    return {
      method: `${images.length} different images (${p.layers} × ${formatBytes(p.layer)} layers each), none seen before, pulled at the same time by ${images.length} Node clients (each ${p.concurrency} blobs at a time, digests verified) through a fresh registry-cache per setting: \`serializeImagePulls: true\` (1), \`maxParallelImagePulls: 3\`, and \`maxParallelImagePulls: null\` (no limit), each with \`pullQueueTimeout: 5m\`. A counting HTTP proxy between the system and the upstream records the peak number of repositories (images) and of requests in flight. The peer (no such setting) is shown for reference. ${p.reps} repetition(s).`,
      columns: [...SETTINGS.map((s) => s.system), 'peer'],
      ratios: [],
      rows: rows.rows,
      notes,
    };
  },
};
