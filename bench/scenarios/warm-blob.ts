import { dirname } from 'node:path';
import { layoutBlobPath } from '../../test/support/make-image.js';
import { curlDownload, curlParallel } from '../clients.js';
import { RowSet, type SystemName } from '../results.js';
import { firstLayer, firstLayerPath, megabytesPerSecond, type Scenario } from '../scenario.js';
import { formatBytes } from '../settings.js';
import { startNginx } from '../systems.js';

/**
 * 1: one client downloading a warm 1 GiB blob from each system, and from nginx (the machine's ceiling); then
 * `clients` clients at once, each on a different warm blob (aggregate throughput).
 */
export const warmBlob: Scenario = {
  id: 'warm-blob',
  number: '1',
  aliases: ['warm', 'throughput'],
  title: 'Warm blob throughput',
  inDefaultRun: true,
  async run(ctx) {
    const img = ctx.images.warm;
    const parallel = ctx.images.parallel;
    if (!parallel) throw new Error('setup made no image for the concurrent clients');
    const w = ctx.settings.warmBlob;
    const { digest, size } = firstLayer(img);
    const path = firstLayerPath(img);
    const layers = parallel.image.manifests[0]?.layers ?? [];
    // nginx serves the layout's own files of the blobs: same bytes, no copy.
    const nginx = await startNginx(dirname(layoutBlobPath(ctx.images.layout.dir, digest)), ctx.teardown);
    const hex = (d: string): string => d.slice('sha256:'.length);
    try {
      const systems: Array<{ system: SystemName; one: string; many: Array<{ url: string; bytes: number }> }> = [
        { system: 'peer', one: `${ctx.peer.url}${path}`, many: layers.map((l) => ({ url: `${ctx.peer.url}/v2/${parallel.repo}/blobs/${l.digest}`, bytes: l.size })) },
        { system: 'registry-cache', one: `${ctx.cache.url}${path}`, many: layers.map((l) => ({ url: `${ctx.cache.url}/v2/${parallel.repo}/blobs/${l.digest}`, bytes: l.size })) },
        { system: 'nginx', one: `${nginx.url}/${hex(digest)}`, many: layers.map((l) => ({ url: `${nginx.url}/${hex(l.digest)}`, bytes: l.size })) },
      ];
      // One untimed download of every blob each: fills the caches and puts every copy in the page cache.
      for (const t of systems) {
        await curlDownload(t.one, size);
        for (const d of t.many) await curlDownload(d.url, d.bytes);
      }
      const rows = new RowSet();
      const oneLabel = `${formatBytes(ctx.settings.sizes.warm)} blob, one client`;
      const manyLabel = `${w.clients} clients at once, each on its own ${formatBytes(w.parallelBlob)} blob: aggregate`;
      for (let rep = 0; rep < w.reps; rep++) {
        for (const t of systems) {
          const d = await curlDownload(t.one, size);
          rows.add('warm-blob-mbps', { label: oneLabel, unit: 'MB/s', better: 'higher', digits: 0 }, t.system, megabytesPerSecond(d.bytes, d.seconds));
          ctx.log(`  rep ${rep + 1} ${t.system}: ${megabytesPerSecond(d.bytes, d.seconds).toFixed(0)} MB/s`);
        }
        for (const t of systems) {
          const d = await curlParallel(t.many);
          rows.add('warm-blob-parallel-mbps', { label: manyLabel, unit: 'MB/s', better: 'higher', digits: 0 }, t.system, megabytesPerSecond(d.bytes, d.seconds));
          ctx.log(`  rep ${rep + 1} ${t.system}, ${w.clients} clients: ${megabytesPerSecond(d.bytes, d.seconds).toFixed(0)} MB/s aggregate`);
        }
      }
      return {
        method:
          `curl downloads the ${formatBytes(ctx.settings.sizes.warm)} single-layer blob to /dev/null over one connection; then ${w.clients} curl processes start at once, each downloading a different ${formatBytes(w.parallelBlob)} blob of one ${w.clients}-layer image, ` +
          `timed from before the first starts until the last exits (aggregate MB/s = all bytes / that wall time). One untimed download of every blob first filled each cache. ${w.reps} repetitions, systems interleaved. MB/s = 10^6 bytes/s of body. ` +
          'nginx serves the same files with sendfile on (one worker).',
        columns: ['peer', 'registry-cache', 'nginx'],
        ratios: [
          { label: 'rc / peer', numerator: 'registry-cache', denominator: 'peer' },
          { label: 'rc / nginx', numerator: 'registry-cache', denominator: 'nginx' },
        ],
        rows: rows.rows,
        notes: [],
      };
    } finally {
      await nginx.destroy();
    }
  },
};
