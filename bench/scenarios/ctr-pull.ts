import { join } from 'node:path';
import { DEAD_SERVER, startContainerd, writeHostsToml } from '../../test/support/containerd.js';
import { pullImage } from '../clients.js';
import type { BenchContext, PushedImage } from '../context.js';
import { RowSet, type SystemName } from '../results.js';
import { emptyAndWarmProcess, type Scenario } from '../scenario.js';
import { secondsSince } from '../stats.js';
import { SharedBandwidth } from '../bandwidth.js';
import { startCountingProxy, type CountingProxy } from '../counting-proxy.js';
import { SkipScenario, startPeer, type ManagedServer } from '../systems.js';
import { own } from '../teardown.js';

/** One way to reach the upstream: on loopback, or through the throttled link. */
interface Network {
  id: 'loopback' | 'throttled';
  label: string;
  /** Where a direct pull goes. */
  upstreamUrl: string;
  peer: ManagedServer;
  cache: ManagedServer;
  /** The bandwidth-limited proxy in front of the upstream (throttled only). */
  throttle?: CountingProxy;
}

/**
 * Times `ctr images pull` (fetch and unpack into overlayfs snapshots) of `ref` by a containerd started empty for this
 * pull, through a hosts.toml whose only mirror is `mirrorUrl` (the upstream, or its throttled link, for a direct pull).
 * Checks the image is complete and unpacked; containerd is stopped and deleted after.
 */
async function timedCtrPull(ctx: BenchContext, ref: string, mirrorUrl: string): Promise<number> {
  const d = await startContainerd();
  const forget = await own(ctx.teardown, `containerd ${d.rootDir}`, () => d.stop());
  try {
    const hostsDir = join(d.rootDir, 'certs.d');
    const registryHost = ref.slice(0, ref.indexOf('/'));
    // Every system as the only mirror, the server a dead port: containerd 1.6 ignores a `server` line without [host]
    // entries (a direct pull "through" the throttled link went straight to the registry), and a fallback must fail.
    await writeHostsToml(hostsDir, registryHost, { server: DEAD_SERVER, mirrors: [{ url: mirrorUrl }] });
    const start = process.hrtime.bigint();
    await d.pull(ref, { hostsDir, timeoutMs: 300_000 });
    const seconds = secondsSince(start);
    const check = await d.check(ref);
    if (!check.complete || !check.unpacked) throw new Error(`ctr images pull ${ref} via ${mirrorUrl}: image ${check.status}, unpacked ${check.unpacked}`);
    return seconds;
  } finally {
    forget();
    await d.stop();
  }
}

function imageBytes(img: PushedImage): number {
  return img.image.blobs.reduce((n, b) => n + b.size, 0);
}

/** 11: what a user feels: `ctr images pull` cold and warm through each system, on loopback and over a 50 MiB/s link. */
export const ctrPull: Scenario = {
  id: 'ctr-pull',
  number: '11',
  aliases: ['ctr', 'containerd'],
  title: 'ctr images pull: what a user waits for',
  inDefaultRun: true,
  async run(ctx) {
    const img = ctx.images.ctr;
    if (!img) throw new Error('setup made no image for ctr-pull');
    if (process.getuid?.() !== 0) throw new SkipScenario('containerd with overlayfs snapshots needs root');
    const s = ctx.settings.ctrPull;
    const ref = `${ctx.upstream.host}/${img.repo}:${img.tag}`;
    const mib = (imageBytes(img) / 2 ** 20).toFixed(0);
    const rate = `${(s.throttledBytesPerSecond / 2 ** 20).toFixed(0)} MiB/s`;
    const throttle = await startCountingProxy(ctx.upstream.url, ctx.teardown, { bandwidth: new SharedBandwidth(s.throttledBytesPerSecond) });
    const throttledPeer = await startPeer({ name: 'peer-throttled', remoteUrl: throttle.url }, ctx.teardown);
    const throttledCache = await ctx.startCacheVariant('registry-cache-throttled', { upstreamUrl: throttle.url });
    const networks: Network[] = [
      { id: 'loopback', label: 'loopback', upstreamUrl: ctx.upstream.url, peer: ctx.peer, cache: ctx.cache },
      { id: 'throttled', label: `upstream at ${rate}`, upstreamUrl: throttle.url, peer: throttledPeer, cache: throttledCache, throttle },
    ];
    const rows = new RowSet();
    const notes: string[] = [];
    try {
      // One untimed pull: the upstream's files in the page cache for every run alike, containerd's binaries too.
      await pullImage(ctx.upstream.url, img.repo, img.tag, { concurrency: 3 });
      for (const net of networks) {
        const row = (kind: 'cold' | 'warm'): { id: string; meta: { label: string; unit: string; better: 'lower'; digits: number } } => ({
          id: `ctr-${net.id}-${kind}-seconds`,
          meta: { label: `${net.label}: ${kind} pull (direct: every pull)`, unit: 's', better: 'lower', digits: 2 },
        });
        const add = (kind: 'cold' | 'warm', system: SystemName, seconds: number): void => {
          const r = row(kind);
          rows.add(r.id, r.meta, system, seconds);
        };
        for (let rep = 0; rep < s.reps; rep++) {
          const before = net.throttle?.counts().responseBytes ?? 0;
          const direct = await timedCtrPull(ctx, ref, net.upstreamUrl);
          if (net.throttle) {
            const linkRate = (net.throttle.counts().responseBytes - before) / direct / 2 ** 20;
            rows.add('ctr-throttled-link', { label: `${net.label}: bytes through the link / the direct pull's time`, unit: 'MiB/s', better: 'none', digits: 1 }, 'direct', linkRate);
          }
          add('cold', 'direct', direct);
          add('warm', 'direct', direct);
          ctx.log(`  ${net.label} rep ${rep + 1} direct: ${direct.toFixed(2)} s`);
          for (const [system, server] of [
            ['peer', net.peer],
            ['registry-cache', net.cache],
          ] as const) {
            await emptyAndWarmProcess(ctx, server);
            const cold = await timedCtrPull(ctx, ref, server.url);
            const linkBefore = net.throttle?.counts().responseBytes ?? 0;
            const warm = await timedCtrPull(ctx, ref, server.url);
            add('cold', system, cold);
            add('warm', system, warm);
            if (net.throttle) {
              rows.add('ctr-throttled-warm-upstream', { label: `${net.label}: upstream bytes during the warm pull`, unit: 'MiB', better: 'lower', digits: 2 }, system, (net.throttle.counts().responseBytes - linkBefore) / 2 ** 20);
            }
            ctx.log(`  ${net.label} rep ${rep + 1} ${system}: cold ${cold.toFixed(2)} s, warm ${warm.toFixed(2)} s`);
          }
        }
      }
      notes.push(`The image: ${img.image.manifests[0]?.layers.length ?? 0} gzip layers (random file content, so gzip cannot shrink it; ${s.layers.map((l) => `${(l.bytes / 2 ** 20).toFixed(0)} MiB in ${l.files} files`).join(', ')}) and a config, ${mib} MiB in all.`);
      return {
        method:
          `containerd 1.6 (the e2e tests' setup: its own root, overlayfs snapshotter, started empty for every pull) runs \`ctr images pull --plain-http --hosts-dir …\` of a ${mib} MiB image by tag; the figure is the wall time of that command: resolve, fetch (3 layers at once, containerd's default) and unpack. ` +
          'The hosts.toml names the system (for a direct pull the upstream, or its throttled link) as the only mirror and a dead port as the server. ' +
          'Cold: the system was emptied (stopped, storage deleted, restarted, the small image pulled once to warm the process) right before; warm: the same pull again right after, by a new empty containerd. ' +
          `Loopback: every server on 127.0.0.1. Throttled: the upstream reached through bench/counting-proxy.ts with a bandwidth (bench/bandwidth.ts) that lets ${rate} of response bodies through for all connections together, for the direct pull, a second peer and a second registry-cache alike. ${s.reps} repetitions, systems interleaved.`,
        columns: ['direct', 'peer', 'registry-cache'],
        ratios: [
          { label: 'rc / direct', numerator: 'registry-cache', denominator: 'direct' },
          { label: 'rc / peer', numerator: 'registry-cache', denominator: 'peer' },
        ],
        rows: rows.rows,
        notes,
      };
    } finally {
      await throttledCache.destroy();
      await throttledPeer.destroy();
      await throttle.close();
    }
  },
};
