import { MANIFEST_ACCEPT, runLoad, type LoadRequest } from '../clients.js';
import type { BenchImages, PushedImage } from '../context.js';
import { prng } from '../prng.js';
import { RowSet, type SystemName } from '../results.js';
import type { Scenario } from '../scenario.js';
import type { ManagedServer } from '../systems.js';

function manifestByTag(img: PushedImage): LoadRequest {
  return { kind: 'manifest-tag', path: `/v2/${img.repo}/manifests/${img.tag}`, accept: MANIFEST_ACCEPT, digest: img.image.digest };
}

function manifestsByDigest(img: PushedImage): LoadRequest[] {
  const digests = new Set([img.image.digest, ...img.image.manifests.map((m) => m.digest)]);
  return [...digests].map((d) => ({ kind: 'manifest-digest', path: `/v2/${img.repo}/manifests/${d}`, accept: MANIFEST_ACCEPT, digest: d }));
}

function blobs(img: PushedImage, kind: string, filter: (size: number) => boolean = () => true): LoadRequest[] {
  return img.image.blobs.filter((b) => filter(b.size)).map((b) => ({ kind, path: `/v2/${img.repo}/blobs/${b.digest}`, digest: b.digest }));
}

/** The warm part of the mix: what every repetition may find stored. */
function warmPools(images: BenchImages): { tag: LoadRequest[]; digest: LoadRequest[]; small: LoadRequest[]; large: LoadRequest[] } {
  const manifestImages = [images.small, images.medium, images.manyLayers, images.multi];
  const largeDigest = images.medium.image.manifests[0]?.layers[0]?.digest;
  return {
    tag: manifestImages.map(manifestByTag),
    digest: manifestImages.flatMap(manifestsByDigest),
    small: [
      ...blobs(images.manyLayers, 'blob-small'),
      ...blobs(images.small, 'blob-small'),
      ...blobs(images.multi, 'blob-small'),
      ...images.medium.image.blobs.filter((b) => b.digest !== largeDigest).map((b) => ({ kind: 'blob-small', path: `/v2/${images.medium.repo}/blobs/${b.digest}`, digest: b.digest })),
    ],
    large: largeDigest === undefined ? [] : [{ kind: 'blob-large', path: `/v2/${images.medium.repo}/blobs/${largeDigest}`, digest: largeDigest }],
  };
}

/**
 * The request sequence of one repetition: `total` requests — a quarter manifests by tag, a quarter by digest, 49 %
 * small blobs, 1 % the large blob (large blobs would otherwise turn the test into a throughput test of the client's
 * hashing) — with the cold image's manifest and blobs (each twice) among them.
 */
export function loadPlan(images: BenchImages, cold: PushedImage, total: number, seed: number): LoadRequest[] {
  // Deterministic, so both systems get the very same request sequence.
  const random = prng(seed);
  const pools = warmPools(images);
  const coldItems = [{ ...manifestByTag(cold), kind: 'cold-manifest' }, ...blobs(cold, 'cold-blob'), ...blobs(cold, 'cold-blob')];
  const plan: LoadRequest[] = [];
  const pick = (pool: LoadRequest[]): LoadRequest => pool[Math.floor(random() * pool.length)] as LoadRequest;
  for (let i = 0; i < Math.max(0, total - coldItems.length); i++) {
    const r = random();
    plan.push(pick(r < 0.25 ? pools.tag : r < 0.5 ? pools.digest : r < 0.99 ? pools.small : pools.large.length > 0 ? pools.large : pools.small));
  }
  // The cold requests go in the first half, so they overlap the warm load rather than trail it.
  for (const item of coldItems) plan.splice(Math.floor(random() * (plan.length / 2)), 0, item);
  return plan;
}

/** 7: a fixed number of mixed requests at fixed concurrency; every body's digest is checked and errors must be 0. */
export const load: Scenario = {
  id: 'load',
  number: '7',
  aliases: ['mixed', 'load-test'],
  title: 'Load test: mixed workload',
  inDefaultRun: true,
  async run(ctx) {
    const s = ctx.settings.load;
    const rows = new RowSet();
    const notes: string[] = [];
    const systems: Array<{ system: SystemName; server: ManagedServer }> = [
      { system: 'peer', server: ctx.peer },
      { system: 'registry-cache', server: ctx.cache },
    ];
    const pools = warmPools(ctx.images);
    const warmSet = [...pools.tag, ...pools.digest, ...pools.small, ...pools.large];
    for (const { system, server } of systems) {
      const warmed = await runLoad(server.url, warmSet, 8);
      if (warmed.errors > 0) throw new Error(`warming ${system} failed: ${warmed.errorSamples.join('; ')}`);
    }
    let counts: Record<string, number> = {};
    for (let rep = 0; rep < s.reps; rep++) {
      const cold = ctx.images.cold[rep];
      if (!cold) throw new Error(`no cold image for repetition ${rep + 1}`);
      const plan = loadPlan(ctx.images, cold, s.requests, 1000 + rep);
      counts = {};
      for (const item of plan) counts[item.kind] = (counts[item.kind] ?? 0) + 1;
      for (const { system, server } of systems) {
        const r = await runLoad(server.url, plan, s.concurrency);
        rows.add('load-rps', { label: `${s.requests} mixed requests at concurrency ${s.concurrency}: requests/s`, unit: 'req/s', better: 'higher', digits: 0 }, system, r.requestsPerSecond);
        rows.add('load-p50', { label: 'p50 latency', unit: 'ms', better: 'lower', digits: 2 }, system, r.p50Ms);
        rows.add('load-p99', { label: 'p99 latency', unit: 'ms', better: 'lower', digits: 2 }, system, r.p99Ms);
        rows.add('load-mbps', { label: 'body throughput', unit: 'MB/s', better: 'higher', digits: 0 }, system, r.bytes / r.seconds / 1e6);
        rows.add('load-errors', { label: 'errors (status, transport or digest mismatch)', unit: 'count', better: 'lower', digits: 0 }, system, r.errors);
        for (const e of r.errorSamples) if (notes.length < 6) notes.push(`${system}, repetition ${rep + 1}: ${e}`);
        ctx.log(`  rep ${rep + 1} ${system}: ${r.requestsPerSecond.toFixed(0)} req/s, p99 ${r.p99Ms.toFixed(1)} ms, errors ${r.errors}`);
      }
    }
    const mix = Object.entries(counts)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
    return {
      method: `Each repetition sends the same ${s.requests} GETs (a seeded shuffle) to each system over ${s.concurrency} keep-alive connections (undici Pool), one request per connection at a time, and checks every status and body sha256. Mix of one repetition: ${mix}. Warm content was fetched once beforehand; the cold part is an image no system has seen (a new one per repetition, ${s.coldLayers} layers of ${(s.coldLayer / 2 ** 20).toFixed(2)} MiB, each blob requested twice). registry-cache runs with its default \`tagTtl: 0s\` here, so every tag request is revalidated upstream as on the peer. ${s.reps} repetitions.`,
      columns: ['peer', 'registry-cache'],
      ratios: [{ label: 'rc / peer', numerator: 'registry-cache', denominator: 'peer' }],
      rows: rows.rows,
      notes,
    };
  },
};
