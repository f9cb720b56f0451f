import { setTimeout as sleep } from 'node:timers/promises';
import { fetchHashed, type HashedDownload } from '../clients.js';
import type { BenchContext } from '../context.js';
import { RowSet, type SystemName } from '../results.js';
import { sampleRss, type RssPeak } from '../rss.js';
import { emptyAndWarmProcess, firstLayer, firstLayerPath, type Scenario } from '../scenario.js';
import { formatBytes } from '../settings.js';
import type { ManagedServer } from '../systems.js';
import { secondsSince } from '../stats.js';

/** GETs of exactly this path the upstream has logged so far. */
async function upstreamGets(ctx: BenchContext, path: string): Promise<number> {
  const entries = await ctx.upstream.requests();
  return entries.filter((e) => e.method === 'GET' && e.uri.split('?')[0] === path).length;
}

/** Waits until the upstream's access log has stopped growing for this path (lines land after their responses). */
async function settledUpstreamGets(ctx: BenchContext, path: string): Promise<number> {
  let last = await upstreamGets(ctx, path);
  for (let i = 0; i < 20; i++) {
    await sleep(100);
    const now = await upstreamGets(ctx, path);
    if (now === last && i >= 2) return now;
    last = now;
  }
  return last;
}

/** `clients` concurrent GETs of one URL, each on its own connection; returns wall time and each outcome. */
async function fanOut(url: string, clients: number): Promise<{ seconds: number; results: Array<PromiseSettledResult<HashedDownload>> }> {
  const start = process.hrtime.bigint();
  const results = await Promise.allSettled(Array.from({ length: clients }, () => fetchHashed(url)));
  return { seconds: secondsSince(start), results };
}

async function warmFanOut(pid: number, url: string, clients: number): Promise<{ seconds: number; results: Array<PromiseSettledResult<HashedDownload>>; rss: RssPeak }> {
  const sampler = sampleRss(pid);
  const out = await fanOut(url, clients);
  return { ...out, rss: sampler.stop() };
}

function badBodies(results: Array<PromiseSettledResult<HashedDownload>>, digest: string, size: number): { bad: number; firstError?: string } {
  let bad = 0;
  let firstError: string | undefined;
  for (const r of results) {
    const ok = r.status === 'fulfilled' && r.value.status === 200 && r.value.digest === digest && r.value.bytes === size;
    if (ok) continue;
    bad++;
    firstError ??=
      r.status === 'rejected'
        ? String(r.reason instanceof Error ? r.reason.message : r.reason)
        : `HTTP ${r.value.status}, ${r.value.bytes} bytes, ${r.value.digest}`;
  }
  return firstError === undefined ? { bad } : { bad, firstError };
}

const MB = 1e6;

/** 4 and 5: 64 clients on one cold 256 MiB blob — wall time, upstream GETs, digests, and the server's peak RSS. */
export const herd: Scenario = {
  id: 'herd',
  number: '4',
  aliases: ['thundering-herd', 'memory', 'rss'],
  title: 'Herd: concurrent clients on one cold blob',
  inDefaultRun: true,
  async run(ctx) {
    const img = ctx.images.herd;
    const { digest, size } = firstLayer(img);
    const path = firstLayerPath(img);
    const clients = ctx.settings.herd.clients;
    const rows = new RowSet();
    const memory = new RowSet();
    const notes: string[] = [];
    const systems: Array<{ system: SystemName; server: ManagedServer }> = [
      { system: 'peer', server: ctx.peer },
      { system: 'registry-cache', server: ctx.cache },
    ];
    for (let rep = 0; rep < ctx.settings.herd.reps; rep++) {
      for (const { system, server } of systems) {
        await emptyAndWarmProcess(ctx, server);
        const url = `${server.url}${path}`;
        const before = await upstreamGets(ctx, path);
        const sampler = sampleRss(server.pid());
        const cold = await fanOut(url, clients);
        const coldRss: RssPeak = sampler.stop();
        const gets = (await settledUpstreamGets(ctx, path)) - before;
        const coldBad = badBodies(cold.results, digest, size);
        // The warm fan-out moves as many bytes as the herd; once is enough to show what the fan-out alone costs.
        const warm = rep === 0 ? await warmFanOut(server.pid(), url, clients) : undefined;
        const warmBad = warm ? badBodies(warm.results, digest, size) : { bad: 0 };
        await emptyAndWarmProcess(ctx, server);
        const single = await fetchHashed(url);
        const singleBad = badBodies([{ status: 'fulfilled', value: single }], digest, size);
        for (const e of [coldBad.firstError, warmBad.firstError, singleBad.firstError]) {
          if (e !== undefined && notes.length < 6) notes.push(`${system}, repetition ${rep + 1}: ${e}`);
        }
        const label = `${clients} clients, cold ${formatBytes(ctx.settings.sizes.herd)} blob`;
        rows.add('herd-wall', { label: `${label}: wall time`, unit: 'ms', better: 'lower', digits: 0 }, system, cold.seconds * 1000);
        rows.add('herd-single', { label: `one client, cold: wall time`, unit: 'ms', better: 'lower', digits: 0 }, system, single.seconds * 1000);
        rows.add('herd-ratio', { label: 'herd wall / one-client wall', unit: '×', better: 'lower', digits: 2 }, system, cold.seconds / single.seconds);
        if (warm) {
          rows.add('herd-warm-wall', { label: `${clients} clients, same blob warm (first repetition only): wall time`, unit: 'ms', better: 'lower', digits: 0 }, system, warm.seconds * 1000);
          rows.add('herd-cold-vs-warm', { label: 'herd wall / warm fan-out wall (first repetition)', unit: '×', better: 'lower', digits: 2 }, system, cold.seconds / warm.seconds);
        }
        rows.add('herd-upstream-gets', { label: 'upstream GETs of the blob during the herd', unit: 'count', better: 'lower', digits: 0 }, system, gets);
        rows.add('herd-bad-bodies', { label: 'bodies failing status/size/sha256 (herd + warm + single)', unit: 'count', better: 'lower', digits: 0 }, system, coldBad.bad + warmBad.bad + singleBad.bad);
        memory.add('rss-herd-sampled', { label: 'peak VmRSS during the herd (sampled every 50 ms)', unit: 'MB', better: 'lower', digits: 1 }, system, coldRss.sampledPeakBytes / MB);
        memory.add('rss-herd-hwm', { label: 'VmHWM after the herd (kernel high-water mark since start)', unit: 'MB', better: 'lower', digits: 1 }, system, coldRss.highWaterMarkBytes / MB);
        if (warm) {
          memory.add('rss-warm-sampled', { label: 'peak VmRSS during the warm fan-out (first repetition; includes what the herd left allocated)', unit: 'MB', better: 'lower', digits: 1 }, system, warm.rss.sampledPeakBytes / MB);
        }
        ctx.log(
          `  rep ${rep + 1} ${system}: herd ${(cold.seconds * 1000).toFixed(0)} ms, ${gets} upstream GETs, single ${(single.seconds * 1000).toFixed(0)} ms, warm ${warm ? (warm.seconds * 1000).toFixed(0) : '-'} ms, bad ${coldBad.bad + warmBad.bad + singleBad.bad}, peak RSS ${(coldRss.sampledPeakBytes / MB).toFixed(0)} MB`,
        );
      }
    }
    return {
      method: `Each repetition empties the system (stop, delete storage, restart, then one pull of the small image so the process itself is warm), then ${clients} Node clients, each on its own connection, GET the ${formatBytes(ctx.settings.sizes.herd)} blob at the same instant; every body is sha256-hashed and compared with its digest and size. Upstream GETs of that blob are counted from the upstream docker-registry's access log (before/after). In the first repetition the same ${clients} clients then GET it again warm (the fan-out cost alone, as many bytes as the herd). After another emptying one client GETs it cold (the single-client time the herd is compared with). ${ctx.settings.herd.reps} repetitions. All clients run in the harness's one Node process, which also hashes every byte (${clients} × ${formatBytes(ctx.settings.sizes.herd)} per fan-out).`,
      columns: ['peer', 'registry-cache'],
      ratios: [{ label: 'rc / peer', numerator: 'registry-cache', denominator: 'peer' }],
      rows: rows.rows,
      notes,
      sections: [
        {
          id: 'memory',
          number: '5',
          title: 'Memory: peak RSS during the herd',
          method: `/proc/PID/status VmRSS of the server process (docker-registry for the peer, the node process for registry-cache) sampled every 50 ms while the herd of scenario 4 runs, each repetition on a freshly started process; VmHWM is the kernel's own peak since that start. MB = 10^6 bytes.`,
          columns: ['peer', 'registry-cache'],
          ratios: [{ label: 'rc / peer', numerator: 'registry-cache', denominator: 'peer' }],
          rows: memory.rows,
          notes: [],
        },
      ],
    };
  },
};
