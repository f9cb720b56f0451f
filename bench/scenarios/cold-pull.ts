import { join } from 'node:path';
import { curlDownload, pullImage } from '../clients.js';
import { RowSet, type SystemName } from '../results.js';
import { processCpuSeconds } from '../rss.js';
import { pidsServing } from '../systems.js';
import { emptyAndWarmProcess, firstLayer, firstLayerPath, megabytesPerSecond, type Scenario } from '../scenario.js';
import { formatBytes } from '../settings.js';

/**
 * 3: a cold pull of the 40-layer image through each system (emptied before every run) vs straight from the upstream;
 * then one client on the cold 1 GiB blob.
 */
export const coldPull: Scenario = {
  id: 'cold-pull',
  number: '3',
  aliases: ['cold'],
  title: 'Cold pull of a multi-layer image',
  inDefaultRun: true,
  async run(ctx) {
    const img = ctx.images.manyLayers;
    const s = ctx.settings.coldPull;
    const rows = new RowSet();
    const layers = img.image.manifests[0]?.layers.length ?? 0;
    const total = img.image.blobs.reduce((sum, b) => sum + b.size, 0);
    const targets: Array<{ system: SystemName; url: () => string; pid?: () => number; empty?: () => Promise<void> }> = [
      { system: 'direct', url: () => ctx.upstream.url },
      { system: 'peer', url: () => ctx.peer.url, pid: () => ctx.peer.pid(), empty: () => emptyAndWarmProcess(ctx, ctx.peer) },
      { system: 'registry-cache', url: () => ctx.cache.url, pid: () => ctx.cache.pid(), empty: () => emptyAndWarmProcess(ctx, ctx.cache) },
    ];
    // CPU of everything a cold pull runs on this machine: the system, the upstream docker-registry and this process
    // (the client). On two cores no pull can take less wall time than half their sum.
    const upstreamPid = pidsServing(join(ctx.upstream.rootDir, 'config.yml'))[0];
    const cpuNow = (t: (typeof targets)[number]): { system: number; upstream: number; client: number } => {
      const client = process.cpuUsage();
      return {
        system: t.pid ? processCpuSeconds(t.pid()) : 0,
        upstream: upstreamPid === undefined ? Number.NaN : processCpuSeconds(upstreamPid),
        client: (client.user + client.system) / 1e6,
      };
    };
    const label = `cold pull, ${layers} layers (${(total / 2 ** 20).toFixed(1)} MiB)`;
    // One untimed direct pull, so every run finds the upstream's files in the page cache alike.
    await pullImage(ctx.upstream.url, img.repo, img.tag, { concurrency: s.concurrency });
    for (let rep = 0; rep < s.reps; rep++) {
      for (const t of targets) {
        await t.empty?.();
        const before = cpuNow(t);
        const r = await pullImage(t.url(), img.repo, img.tag, { concurrency: s.concurrency });
        const after = cpuNow(t);
        const cpu = { system: after.system - before.system, upstream: after.upstream - before.upstream, client: after.client - before.client };
        rows.add('cold-pull-seconds', { label, unit: 'ms', better: 'lower', digits: 0 }, t.system, r.seconds * 1000);
        rows.add('cold-pull-cpu-system', { label: `${label}: CPU of the system itself`, unit: 'CPU ms', better: 'lower', digits: 0 }, t.system, cpu.system * 1000);
        rows.add('cold-pull-cpu-all', { label: `${label}: CPU of the system, the upstream and the client together`, unit: 'CPU ms', better: 'lower', digits: 0 }, t.system, (cpu.system + cpu.upstream + cpu.client) * 1000);
        ctx.log(
          `  rep ${rep + 1} ${t.system}: ${(r.seconds * 1000).toFixed(0)} ms (${r.requests} requests); CPU ms: system ${(cpu.system * 1000).toFixed(0)}, upstream ${(cpu.upstream * 1000).toFixed(0)}, client ${(cpu.client * 1000).toFixed(0)}`,
        );
      }
    }
    const big = firstLayer(ctx.images.warm);
    const bigPath = firstLayerPath(ctx.images.warm);
    const bigLabel = `cold ${formatBytes(ctx.settings.sizes.warm)} blob, one client`;
    await curlDownload(ctx.upstream.url + bigPath, big.size);
    for (let rep = 0; rep < s.reps; rep++) {
      for (const t of targets) {
        await t.empty?.();
        const d = await curlDownload(t.url() + bigPath, big.size);
        rows.add('cold-blob-mbps', { label: bigLabel, unit: 'MB/s', better: 'higher', digits: 0 }, t.system, megabytesPerSecond(d.bytes, d.seconds));
        ctx.log(`  rep ${rep + 1} ${t.system}: ${bigLabel} ${megabytesPerSecond(d.bytes, d.seconds).toFixed(0)} MB/s`);
      }
    }
    return {
      method: `A Node client (undici) GETs the manifest by tag, then the config and all ${layers} layers (${formatBytes(ctx.settings.sizes.manyLayer)} each) with at most ${s.concurrency} at once, verifying every digest and size. CPU rows: user + system seconds of the system's process and of the upstream docker-registry (/proc/PID/stat, 10 ms ticks) and of the client (this process) over each pull; on this 2-core machine a pull cannot take less wall time than half their sum. Then curl downloads the ${formatBytes(ctx.settings.sizes.warm)} blob to /dev/null over one connection (MB/s = 10^6 bytes/s). Before each run through the peer or registry-cache that system is stopped, its storage deleted and restarted, and the small image pulled through it once (cold content, warm process); "direct" fetches the same from the upstream docker-registry itself. ${s.reps} repetitions, systems interleaved.`,
      columns: ['direct', 'peer', 'registry-cache'],
      ratios: [
        { label: 'rc / direct', numerator: 'registry-cache', denominator: 'direct' },
        { label: 'rc / peer', numerator: 'registry-cache', denominator: 'peer' },
      ],
      rows: rows.rows,
      notes: [],
    };
  },
};
