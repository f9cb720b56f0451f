import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { findFreePort } from '../../test/support/free-port.js';
import { SharedBandwidth } from '../bandwidth.js';
import { pullImage, type PullResult } from '../clients.js';
import type { BenchContext, PushedImage } from '../context.js';
import { startCountingProxy } from '../counting-proxy.js';
import { RowSet, type SystemName } from '../results.js';
import type { Scenario } from '../scenario.js';
import { formatBytes } from '../settings.js';
import { startPeer, type ManagedServer } from '../systems.js';
import { quantile, secondsSince } from '../stats.js';

/** The systems compared: K registry-caches sharing, K not sharing, K distribution proxies. */
const SYSTEMS = ['rc sharing', 'rc no sharing', 'peer'] as const satisfies readonly SystemName[];
type RolloutSystem = (typeof SYSTEMS)[number];

/** Starts all of `starts` at once; if one fails, the others are destroyed before the error goes on. */
async function startAll(starts: Array<() => Promise<ManagedServer>>): Promise<ManagedServer[]> {
  const settled = await Promise.allSettled(starts.map((start) => start()));
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) {
    await Promise.all(settled.map((s) => (s.status === 'fulfilled' ? s.value.destroy() : undefined)));
    throw failed.reason;
  }
  return settled.map((s) => (s as PromiseFulfilledResult<ManagedServer>).value);
}

/** K nodes of one system, each in front of the throttled upstream (`upstreamUrl`). */
async function startNodes(ctx: BenchContext, system: RolloutSystem, k: number, upstreamUrl: string, secretFile: string): Promise<ManagedServer[]> {
  const starts: Array<() => Promise<ManagedServer>> = [];
  if (system === 'peer') {
    for (let i = 0; i < k; i++) starts.push(() => startPeer({ name: `peer-rollout-${i + 1}`, remoteUrl: upstreamUrl }, ctx.teardown));
  } else if (system === 'rc no sharing') {
    for (let i = 0; i < k; i++) starts.push(() => ctx.startCacheVariant(`rc-rollout-${i + 1}`, { upstreamUrl }));
  } else {
    // Peer listeners need their addresses known before any node starts: every node lists all of them.
    const peers: string[] = [];
    for (let i = 0; i < k; i++) peers.push(`127.0.0.1:${await findFreePort()}`);
    peers.forEach((peerListen, i) =>
      starts.push(() => ctx.startCacheVariant(`rc-rollout-sharing-${i + 1}`, { upstreamUrl, config: { peers, peerListen, peerSecret: secretFile } })),
    );
  }
  return startAll(starts);
}

/** What one run of K nodes measured. */
interface RolloutRun {
  wallSeconds: number;
  pulls: Array<PromiseSettledResult<PullResult>>;
  upstreamBytes: number;
  /** Most upstream GETs of any one layer. */
  maxGetsPerLayer: number;
}

async function runOnce(ctx: BenchContext, img: PushedImage, system: RolloutSystem, k: number, secretFile: string): Promise<RolloutRun> {
  const r = ctx.settings.rollout;
  const proxy = await startCountingProxy(ctx.upstream.url, ctx.teardown, { bandwidth: new SharedBandwidth(r.bandwidth) });
  try {
    const nodes = await startNodes(ctx, system, k, proxy.url, secretFile);
    let wallSeconds: number;
    let pulls: Array<PromiseSettledResult<PullResult>>;
    try {
      // Warm processes, cold content (as in the other scenarios): a fresh process's JIT warm-up is not rollout cost.
      await Promise.all(nodes.map((n) => pullImage(n.url, ctx.images.small.repo, ctx.images.small.tag, { concurrency: 2 })));
      proxy.reset();
      const start = process.hrtime.bigint();
      pulls = await Promise.allSettled(nodes.map((n) => pullImage(n.url, img.repo, img.tag, { concurrency: r.concurrency })));
      wallSeconds = secondsSince(start);
    } finally {
      // Stopped before counting: a fill still running after its client finished is upstream cost too.
      await Promise.all(nodes.map((n) => n.destroy()));
    }
    const counts = proxy.counts();
    const layerGets = (img.image.manifests[0]?.layers ?? []).map((l) => counts.byRequest.get(`GET /v2/${img.repo}/blobs/${l.digest}`) ?? 0);
    return { wallSeconds, pulls, upstreamBytes: counts.responseBytes, maxGetsPerLayer: Math.max(0, ...layerGets) };
  } finally {
    await proxy.close();
  }
}

/**
 * #13's rollout: K = 1, 2, 4, 8 nodes, one client each, pull the same cold image at once through an upstream limited
 * to one shared bandwidth — K registry-caches sharing blobs (a static `peers` list on loopback), the same without
 * sharing, and K distribution proxies. Upstream bytes, wall time to the last client done, time to first layer byte.
 */
export const rollout: Scenario = {
  id: 'rollout',
  number: '10',
  aliases: ['cluster', 'sharing', 'peers'],
  title: 'Rollout: K nodes pull one cold image at once (sharing between nodes)',
  inDefaultRun: true,
  async run(ctx) {
    const r = ctx.settings.rollout;
    const img = ctx.images.rollout;
    if (!img) throw new Error('the rollout image was not synthesized');
    const imageBytes = r.layers * r.layer;
    const secretFile = join(ctx.tmpRoot, 'rollout-peer-secret');
    await writeFile(secretFile, randomBytes(48).toString('base64'), { mode: 0o600 });
    const rows = new RowSet();
    const notes: string[] = [];
    const wallAtOne = new Map<RolloutSystem, number>();
    for (let rep = 0; rep < r.reps; rep++) {
      for (const k of r.nodes) {
        for (const system of SYSTEMS) {
          const run = await runOnce(ctx, img, system, k, secretFile);
          const ok = run.pulls.filter((p): p is PromiseFulfilledResult<PullResult> => p.status === 'fulfilled').map((p) => p.value);
          const failed = run.pulls.length - ok.length;
          for (const p of run.pulls) if (p.status === 'rejected' && notes.length < 8) notes.push(`${system}, K = ${k}: ${p.reason instanceof Error ? p.reason.message : String(p.reason)}`);
          const ttfb = ok.map((p) => p.firstBlobByteSeconds * 1000).sort((a, b) => a - b);
          const upstream = run.upstreamBytes / imageBytes;
          const at = `K = ${k}`;
          rows.add(`rollout-k${k}-upstream`, { label: `${at}: upstream bytes / image size`, unit: '×', better: 'lower', digits: 2 }, system, upstream);
          rows.add(`rollout-k${k}-gets`, { label: `${at}: upstream GETs of the most-fetched layer`, unit: 'count', better: 'lower', digits: 0 }, system, run.maxGetsPerLayer);
          rows.add(`rollout-k${k}-wall`, { label: `${at}: wall time to the last client done`, unit: 'ms', better: 'lower', digits: 0 }, system, run.wallSeconds * 1000);
          if (k === r.nodes[0]) wallAtOne.set(system, run.wallSeconds);
          const base = wallAtOne.get(system);
          if (k !== r.nodes[0] && base !== undefined) {
            rows.add(`rollout-k${k}-wall-ratio`, { label: `${at}: wall / wall at K = ${r.nodes[0]} (same repetition)`, unit: '×', better: 'lower', digits: 2 }, system, run.wallSeconds / base);
          }
          if (ttfb.length > 0) {
            rows.add(`rollout-k${k}-ttfb-median`, { label: `${at}: time to first layer byte, median node`, unit: 'ms', better: 'lower', digits: 0 }, system, quantile(ttfb, 0.5));
            rows.add(`rollout-k${k}-ttfb-max`, { label: `${at}: time to first layer byte, slowest node`, unit: 'ms', better: 'lower', digits: 0 }, system, ttfb[ttfb.length - 1] as number);
          }
          rows.add(`rollout-k${k}-failed`, { label: `${at}: failed pulls`, unit: 'count', better: 'lower', digits: 0 }, system, failed);
          if (system === 'rc sharing' && k > 1 && upstream > 1.5 && !notes.some((n) => n.startsWith('rc sharing fetched'))) {
            // Either the build does not share, or nodes fell back to the upstream (a late coordinator answer): the
            // upstream GETs per layer tell which.
            notes.push(`rc sharing fetched ${upstream.toFixed(2)}× the image upstream at K = ${k} (most-fetched layer: ${run.maxGetsPerLayer} GETs): some nodes did not get the layers from their peers.`);
          }
          ctx.log(
            `  rep ${rep + 1} K=${k} ${system}: wall ${(run.wallSeconds * 1000).toFixed(0)} ms, upstream ${upstream.toFixed(2)}× image, max GETs/layer ${run.maxGetsPerLayer}, first byte ${ttfb.map((t) => t.toFixed(0)).join('/')} ms, failed ${failed}`,
          );
        }
      }
    }
    return {
      method:
        `For each K in ${r.nodes.join(', ')}: K fresh nodes of each system start on loopback (registry-cache with \`peers\` listing all K peer listeners, \`peerListen\` and one shared \`peerSecret\` file; the same without the peer keys; Debian's docker-registry in proxy mode, the peer), each process is warmed with the small image, then K Node clients, one per node, pull the same cold image (${r.layers} × ${formatBytes(r.layer)} layers, ${r.concurrency} layers at a time as containerd does, every digest checked) at the same instant. ` +
        `Every node reaches the upstream docker-registry through one counting proxy that limits all response bodies together to ${formatBytes(r.bandwidth)}/s (a registry's or an egress link's bandwidth, shared by the cluster); upstream bytes are the bodies it sent (after the nodes stopped, so fills outliving their client count too), over the image's layer bytes. ` +
        `Wall time runs from the start to the last client done; time to first layer byte is per node, from the start to the first byte of any layer. ${r.reps} repetition(s); the clients run in the harness's one Node process and hash every byte.`,
      columns: [...SYSTEMS],
      ratios: [
        { label: 'sharing / no sharing', numerator: 'rc sharing', denominator: 'rc no sharing' },
        { label: 'sharing / peer', numerator: 'rc sharing', denominator: 'peer' },
      ],
      rows: rows.rows,
      notes,
    };
  },
};
