import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startCache } from '../support/cache-server.js';
import { runCli } from '../support/cli.js';
import { FakeUpstream, makeImage } from '../support/fake-upstream.js';
import { findFreePort } from '../support/free-port.js';
import { makeTempDir, removeTempDir } from '../support/temp-dir.js';

describe('registry-cache status', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  it("prints a running server's status from its metricsListen, and what the store tells once no server answers", async () => {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    const dir = await makeTempDir('rc-status-cmd-');
    cleanup.push(() => removeTempDir(dir));
    const storage = join(dir, 'store');
    const port = await findFreePort();
    const settings = { metricsListen: `127.0.0.1:${port}`, maxStorageBytes: '10Mi', imageGCHighThresholdPercent: 85, imageGCLowThresholdPercent: 80 };
    const file = join(dir, 'config.yaml');
    await writeFile(
      file,
      [`storage: ${storage}`, `metricsListen: ${settings.metricsListen}`, 'maxStorageBytes: 10Mi', 'imageGCHighThresholdPercent: 85', 'imageGCLowThresholdPercent: 80', `registries: { "${upstream.host}": { url: "${upstream.url}" } }`, `defaultRegistry: "${upstream.host}"`].join('\n'),
    );
    const cache = await startCache({ [upstream.host]: upstream.url }, settings, storage);
    let stopped = false;
    cleanup.push(async () => {
      if (!stopped) await cache.stop({ keepStorage: true });
    });
    const image = makeImage([200_000]);
    upstream.push('pub/app', 'v1', image);
    for (const path of ['manifests/v1', ...image.blobs.map((b) => `blobs/${b.digest}`)]) {
      const res = await fetch(`${cache.url}/v2/pub/app/${path}?ns=${upstream.host}`);
      await res.arrayBuffer();
      expect(res.status).toBe(200);
    }
    await cache.services.blobs.settle();

    const live = await runCli(['status', '--config', file]);
    expect(live.code).toBe(0);
    expect(live.stdout).toContain(`(live from http://127.0.0.1:${port})`);
    expect(live.stdout).toMatch(/^hit ratio  0\.0% \(0 hits, \d misses\)/m);
    expect(live.stdout).toMatch(/^store      \[#*-+\] \d+\.\d% of 10\.0 MiB \(maxStorageBytes\); evicts above 85% down to 80%/m);
    expect(live.stdout).toContain(`  ${upstream.host}/pub/app:v1  195.`);
    expect(live.stdout).toMatch(/^pulls      \d active of 5, 0 queued$/m);
    const json = JSON.parse((await runCli(['status', '--json', '--config', file])).stdout) as { source: string; cache: { misses: number }; images: { names: string[] }[] };
    expect(json.source).toBe(`http://127.0.0.1:${port}`);
    expect(json.images[0]?.names).toEqual([`${upstream.host}/pub/app:v1`]);

    await cache.stop({ keepStorage: true });
    stopped = true;
    const offline = await runCli(['status', '--config', file]);
    expect(offline.code).toBe(0);
    expect(offline.stdout).toContain(`(from the store: no server answered at http://127.0.0.1:${port} (ECONNREFUSED))`);
    expect(offline.stdout).toContain(`  ${upstream.host}/pub/app:v1  195.`);
    expect(offline.stdout).toMatch(/^store      \[#*-+\] \d+\.\d% of 10\.0 MiB/m);
    expect(offline.stdout).not.toContain('hit ratio');
    const offlineJson = JSON.parse((await runCli(['status', '--json', '--config', file])).stdout) as { source: string; images: { names: string[] }[] };
    expect(offlineJson.source).toBe('store');
    expect(offlineJson.images[0]?.names).toEqual([`${upstream.host}/pub/app:v1`]);
  });
});
