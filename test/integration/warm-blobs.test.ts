import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage, sha256 } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';

const MB = 1_000_000;

describe('stored blobs under concurrent readers', () => {
  let upstream: FakeUpstream | undefined;
  let cache: TestCache | undefined;

  afterEach(async () => {
    await cache?.stop();
    await upstream?.stop();
  });

  it('serves every byte right to 16 concurrent clients that stall until all have started (reused read buffers)', async () => {
    // Larger than loopback socket buffers: while the clients stall, the server's writes wait in its queue.
    const image = makeImage(Array.from({ length: 8 }, () => 8 * MB));
    upstream = await new FakeUpstream().start();
    upstream.push('team/app', '1.0', image);
    cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify' });
    const base = `${cache.url}/v2/team/app`;
    const layers = image.blobs.filter((b) => b.bytes.length === 8 * MB);
    expect((await call(`${base}/manifests/1.0?ns=${upstream.host}`)).status).toBe(200);
    for (const layer of layers) expect(sha256((await call(`${base}/blobs/${layer.digest}?ns=${upstream.host}`)).body)).toBe(layer.digest);
    await cache.services.blobs.settle();
    const port = Number(new URL(cache.url).port);

    // Two clients per stored blob; each pauses at its first chunk until every one of them has received one.
    const clients = [...layers, ...layers];
    let started = 0;
    let release = (): void => undefined;
    const allStarted = new Promise<void>((resolve) => (release = resolve));
    const downloads = clients.map(
      (layer) =>
        new Promise<{ digest: string; bytes: number }>((resolve, reject) => {
          const req = request({ host: '127.0.0.1', port, path: `/v2/team/app/blobs/${layer.digest}?ns=${upstream?.host}`, agent: false }, (res) => {
            const hash = createHash('sha256');
            let bytes = 0;
            res.on('data', (chunk: Buffer) => {
              if (bytes === 0) {
                res.pause();
                if (++started === clients.length) release();
                void allStarted.then(() => res.resume());
              }
              hash.update(chunk);
              bytes += chunk.length;
            });
            res.once('end', () => resolve({ digest: `sha256:${hash.digest('hex')}`, bytes }));
            res.once('error', reject);
          });
          req.once('error', reject);
          req.end();
        }),
    );
    const results = await Promise.all(downloads);
    results.forEach((r, i) => {
      expect(r.bytes).toBe(8 * MB);
      expect(r.digest).toBe(clients[i]?.digest);
    });
    // Served from the store: one upstream GET per blob, from the fill above.
    expect(upstream.count('GET', /\/blobs\//)).toBe(layers.length);
  });
});
