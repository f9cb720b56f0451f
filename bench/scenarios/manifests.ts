import { setTimeout as delay } from 'node:timers/promises';
import { MANIFEST_ACCEPT, pullImage, runWrk, type WrkResult } from '../clients.js';
import { RowSet, type SystemName } from '../results.js';
import type { Scenario } from '../scenario.js';

/** 2: warm manifest GETs at 64 connections with wrk, by digest and by tag. */
export const manifests: Scenario = {
  id: 'manifests',
  number: '2',
  aliases: ['manifest', 'rps'],
  title: 'Warm manifest requests',
  inDefaultRun: true,
  async run(ctx) {
    const img = ctx.images.small;
    const s = ctx.settings.manifests;
    const byDigest = `/v2/${img.repo}/manifests/${img.image.digest}`;
    const byTag = `/v2/${img.repo}/manifests/${img.tag}`;
    // The default cache revalidates a tag upstream on every request (tagTtl 0s); the by-tag figure uses one with 1m.
    const cacheTtl = await ctx.startCacheVariant('registry-cache-ttl1m', { config: { tagTtl: '1m' } });
    try {
      const rows = new RowSet();
      const wrk = (url: string): Promise<WrkResult> =>
        runWrk(url, { connections: s.connections, threads: s.threads, durationSeconds: s.durationSeconds, headers: { accept: MANIFEST_ACCEPT } });
      const record = (id: string, label: string, system: SystemName, r: WrkResult): void => {
        rows.add(`${id}-rps`, { label: `${label}: requests/s`, unit: 'req/s', better: 'higher', digits: 0 }, system, r.requestsPerSecond);
        rows.add(`${id}-p50`, { label: `${label}: p50 latency`, unit: 'ms', better: 'lower', digits: 2 }, system, r.p50Ms);
        rows.add(`${id}-p99`, { label: `${label}: p99 latency`, unit: 'ms', better: 'lower', digits: 2 }, system, r.p99Ms);
        rows.add(`${id}-errors`, { label: `${label}: errors (non-2xx + socket)`, unit: 'count', better: 'lower', digits: 0 }, system, r.errors);
        ctx.log(`  ${label} ${system}: ${r.requestsPerSecond.toFixed(0)} req/s, p50 ${r.p50Ms.toFixed(2)} ms, p99 ${r.p99Ms.toFixed(2)} ms, errors ${r.errors}`);
      };
      const runs: Array<{ id: string; label: string; system: SystemName; url: string }> = [
        { id: 'manifest-digest', label: 'by digest', system: 'peer', url: ctx.peer.url + byDigest },
        { id: 'manifest-digest', label: 'by digest', system: 'registry-cache', url: ctx.cache.url + byDigest },
        { id: 'manifest-tag', label: 'by tag', system: 'peer', url: ctx.peer.url + byTag },
        { id: 'manifest-tag', label: 'by tag', system: 'registry-cache', url: cacheTtl.url + byTag },
        { id: 'manifest-tag-ttl0', label: 'by tag, registry-cache with tagTtl 0s', system: 'registry-cache', url: ctx.cache.url + byTag },
      ];
      // Warm every system: one full pull stores the manifest (and its blobs) and, for tagTtl 1m, the tag.
      for (const base of [ctx.peer.url, ctx.cache.url, cacheTtl.url]) await pullImage(base, img.repo, img.tag, { concurrency: 2 });
      // Upstream manifest requests for the tag (HEAD or GET) during a run, per client request: the peer asks for each,
      // registry-cache with tagTtl 0s shares one HEAD among the revalidations in flight at once (#14 item 1).
      const countTagAsks = async (): Promise<number> =>
        (await ctx.upstream.settledRequests()).filter((e) => e.uri.split('?')[0] === `/v2/${img.repo}/manifests/${img.tag}`).length;
      // wrk stops with up to 64 requests still in the server; the peer answers them (asking the upstream) after wrk
      // has gone. Counted once the count stands still for half a second (at most 10 s), they stay with their run.
      const tagAsks = async (): Promise<number> => {
        let last = await countTagAsks();
        for (let i = 0; i < 20; i++) {
          await delay(500);
          const now = await countTagAsks();
          if (now === last) return now;
          last = now;
        }
        return last;
      };
      for (let rep = 0; rep < s.reps; rep++) {
        for (const r of runs) {
          const byTag = r.id !== 'manifest-digest';
          // wrk leaves up to 64 requests in the previous system; by-tag runs wait for them while counting upstream
          // requests, and a by-digest run waits as long, so no run starts while the last one's server still works.
          const before = byTag ? await tagAsks() : (await delay(1_000), 0);
          const result = await wrk(r.url);
          record(r.id, r.label, r.system, result);
          if (byTag) {
            const asks = (await tagAsks()) - before;
            rows.add(`${r.id}-upstream`, { label: `${r.label}: upstream requests for the tag per 100 client requests`, unit: 'count', better: 'lower', digits: 2 }, r.system, (100 * asks) / result.requests);
            ctx.log(`  ${r.label} ${r.system}: ${asks} upstream requests for the tag, ${result.requests} client requests`);
          }
        }
      }
      // The peer has no tag TTL: its by-tag figures are the comparison for both registry-cache settings.
      for (const suffix of ['rps', 'p50', 'p99', 'errors', 'upstream']) {
        const peerSamples = rows.rows.find((x) => x.id === `manifest-tag-${suffix}`)?.samples.peer;
        const ttl0 = rows.rows.find((x) => x.id === `manifest-tag-ttl0-${suffix}`);
        if (peerSamples && ttl0) ttl0.samples.peer = [...peerSamples];
      }
      return {
        method: `wrk (${s.threads} thread, ${s.connections} connections, ${s.durationSeconds} s per run, ${s.reps} repetitions, systems interleaved) GETs the manifest of the ${img.repo} image with containerd's Accept list, after one warming pull. By digest: the stored manifest. By tag: registry-cache runs with \`tagTtl: 1m\` (a second instance, same upstream), so a tag answer is trusted for a minute as the kubelet's IfNotPresent would; the peer always asks the upstream. The last rows repeat the by-tag run against the default registry-cache (\`tagTtl: 0s\`: every request revalidates the tag upstream, like the peer, but revalidations in flight at once share one HEAD); the peer's figures there are the by-tag run's. "Upstream requests for the tag" counts the upstream docker-registry's access-log lines for the tag (HEAD or GET) during each wrk run.`,
        columns: ['peer', 'registry-cache'],
        ratios: [{ label: 'rc / peer', numerator: 'registry-cache', denominator: 'peer' }],
        rows: rows.rows,
        notes: [],
      };
    } finally {
      await cacheTtl.destroy();
    }
  },
};
