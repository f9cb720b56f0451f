import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { MANIFEST_ACCEPT, curlDownload, fetchHashed, pullImage, runWrk } from './clients.js';
import type { BenchContext } from './context.js';
import { renderProfileSummary, summarizeProfiles } from './cpu-profile.js';
import type { TargetOutcome } from './report.js';
import { firstLayer, firstLayerPath } from './scenario.js';
import { startCache, type ManagedServer } from './systems.js';

/** A short registry-cache-only workload that reproduces one scenario's hot path under `--cpu-prof`. */
interface ProfiledWorkload {
  scenario: string;
  title: string;
  /** Fills the store first; the process is then restarted so the profile holds the measured part (and a start-up). */
  prepare?(ctx: BenchContext, cache: ManagedServer): Promise<void>;
  run(ctx: BenchContext, cache: ManagedServer): Promise<void>;
}

const WORKLOADS: ProfiledWorkload[] = [
  {
    scenario: '1',
    title: 'warm blob: 3 one-client downloads of the warm blob, by a process started on the filled store',
    async prepare(ctx, cache) {
      const { size } = firstLayer(ctx.images.warm);
      await curlDownload(cache.url + firstLayerPath(ctx.images.warm), size);
    },
    async run(ctx, cache) {
      const { size } = firstLayer(ctx.images.warm);
      for (let i = 0; i < 3; i++) await curlDownload(cache.url + firstLayerPath(ctx.images.warm), size);
    },
  },
  {
    scenario: '2',
    title: 'manifests by digest: wrk, 64 connections, 5 s, by a process started on the filled store',
    async prepare(ctx, cache) {
      const img = ctx.images.small;
      await pullImage(cache.url, img.repo, img.tag, { concurrency: 2 });
    },
    async run(ctx, cache) {
      const img = ctx.images.small;
      await runWrk(`${cache.url}/v2/${img.repo}/manifests/${img.image.digest}`, { connections: 64, threads: 1, durationSeconds: 5, headers: { accept: MANIFEST_ACCEPT } });
    },
  },
  {
    scenario: '3',
    title: 'cold pulls: the 40-layer image and every load-test cold image, one process, no restarts',
    async run(ctx, cache) {
      for (const img of [ctx.images.manyLayers, ...ctx.images.cold]) {
        await pullImage(cache.url, img.repo, img.tag, { concurrency: ctx.settings.coldPull.concurrency });
      }
    },
  },
  {
    scenario: '4',
    title: 'herd: 64 clients on the cold herd blob, once',
    async run(ctx, cache) {
      const url = cache.url + firstLayerPath(ctx.images.herd);
      await Promise.all(Array.from({ length: ctx.settings.herd.clients }, () => fetchHashed(url)));
    },
  },
];

/**
 * For every missed target, reruns a short version of its scenario against a registry-cache started with
 * `node --cpu-prof` and returns a markdown section per profile (files stay in `outDir`).
 */
export async function profileMissedTargets(ctx: BenchContext, targets: TargetOutcome[], outDir: string, all: boolean): Promise<string[]> {
  const scenarios = new Set(targets.filter((t) => all || t.met === false).map((t) => t.scenario));
  // Memory (5) is measured during the herd (4).
  if (scenarios.has('5')) scenarios.add('4');
  const sections: string[] = [];
  for (const w of WORKLOADS) {
    if (!scenarios.has(w.scenario)) continue;
    const dir = join(outDir, `scenario-${w.scenario}`);
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    ctx.log(`profiling registry-cache: ${w.title}`);
    const cache = await startCache(
      { name: `rc-profile-${w.scenario}`, registryHost: ctx.upstream.host, upstreamUrl: ctx.upstream.url, nodeFlags: ['--cpu-prof', `--cpu-prof-dir=${dir}`] },
      ctx.teardown,
    );
    try {
      if (w.prepare) {
        await w.prepare(ctx, cache);
        await cache.restart();
        // The first process's profile (the filling) is not what this section is about.
        await rm(dir, { recursive: true, force: true });
        await mkdir(dir, { recursive: true });
      }
      await w.run(ctx, cache);
    } finally {
      // The profile is written when the process exits.
      await cache.destroy();
    }
    sections.push(renderProfileSummary(`Scenario ${w.scenario}: ${w.title}`, await summarizeProfiles(dir)));
  }
  return sections;
}
