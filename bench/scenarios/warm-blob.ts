import { dirname } from 'node:path';
import { layoutBlobPath } from '../../test/support/make-image.js';
import { curlDownload } from '../clients.js';
import { RowSet } from '../results.js';
import { firstLayer, firstLayerPath, megabytesPerSecond, type Scenario } from '../scenario.js';
import { formatBytes } from '../settings.js';
import { startNginx } from '../systems.js';

/** 1: one client downloading a warm 1 GiB blob from each system, and from nginx (the machine's ceiling). */
export const warmBlob: Scenario = {
  id: 'warm-blob',
  number: '1',
  aliases: ['warm', 'throughput'],
  title: 'Warm blob throughput',
  inDefaultRun: true,
  async run(ctx) {
    const img = ctx.images.warm;
    const { digest, size } = firstLayer(img);
    const path = firstLayerPath(img);
    // nginx serves the layout's own file of the blob: same bytes, no copy.
    const nginx = await startNginx(dirname(layoutBlobPath(ctx.images.layout.dir, digest)), ctx.teardown);
    try {
      const targets = [
        { system: 'peer' as const, url: `${ctx.peer.url}${path}` },
        { system: 'registry-cache' as const, url: `${ctx.cache.url}${path}` },
        { system: 'nginx' as const, url: `${nginx.url}/${digest.slice('sha256:'.length)}` },
      ];
      // One untimed download each: fills the caches and puts every copy in the page cache.
      for (const t of targets) await curlDownload(t.url, size);
      const rows = new RowSet();
      for (let rep = 0; rep < ctx.settings.warmBlob.reps; rep++) {
        for (const t of targets) {
          const d = await curlDownload(t.url, size);
          rows.add('warm-blob-mbps', { label: `${formatBytes(ctx.settings.sizes.warm)} blob, one client`, unit: 'MB/s', better: 'higher', digits: 0 }, t.system, megabytesPerSecond(d.bytes, d.seconds));
          ctx.log(`  rep ${rep + 1} ${t.system}: ${megabytesPerSecond(d.bytes, d.seconds).toFixed(0)} MB/s`);
        }
      }
      return {
        method: `curl downloads the ${formatBytes(ctx.settings.sizes.warm)} single-layer blob to /dev/null over one connection, after one untimed download that filled each cache; ${ctx.settings.warmBlob.reps} repetitions, systems interleaved. MB/s = 10^6 bytes/s of body. nginx serves the same file with sendfile on (one worker).`,
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
