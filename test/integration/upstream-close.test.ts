import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { startCacheProcess, type CacheProcess } from '../support/cache-process.js';
import { FakeUpstream, makeImage, sha256 } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';

/** A GET whose reader pauses after every chunk: backpressure on the cache's readers of the fills. */
function slowGet(url: string): Promise<{ status: number; body: Buffer; error?: Error }> {
  return new Promise((resolve) => {
    const req = request(url, { agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        res.pause();
        setTimeout(() => res.resume(), 1);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), ...(res.complete ? {} : { error: new Error('incomplete body') }) }));
      res.on('error', (error) => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), error }));
    });
    req.on('error', (error) => resolve({ status: 0, body: Buffer.alloc(0), error }));
    req.end();
  });
}

describe('an upstream that closes its connections after correct answers', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  // nodejs/undici#5360: under backpressure undici 7's parser paused, and the FIN that nginx sends after the last
  // answer of a keep-alive connection hit `assert(!this.paused)` in a socket 'end' handler: an uncatchable crash.
  it('survives 32 concurrent cold blob GETs with slow readers, and serves every body correctly', async () => {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    const image = makeImage(Array.from({ length: 31 }, () => 1024 * 1024));
    upstream.push('close/app', '1', image);
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'connection-close' } : undefined);
    // The fill, not the client, reads the upstream body: a bandwidth limit makes it the slow reader whose backpressure
    // pauses undici's parser when the FIN arrives (without it, loopback and a fast disk rarely pause it).
    const cache: CacheProcess = await startCacheProcess({ [upstream.host]: upstream.url }, ['upstreamBandwidthLimit: 64Mi']);
    cleanup.push(() => cache.stop());
    const base = `${cache.url}/v2/close/app`;
    const ns = `ns=${upstream.host}`;
    // The manifest first, as a client pulls: its 32 blobs are then one image and fill at once, not 5 at a time.
    expect((await call(`${base}/manifests/1?${ns}`)).status).toBe(200);
    expect(image.blobs).toHaveLength(32);

    const answers = await Promise.all(image.blobs.map((b) => slowGet(`${base}/blobs/${b.digest}?${ns}`)));

    const log = await cache.daemon.readLog();
    expect({ exited: cache.daemon.exited(), crash: /AssertionError[\s\S]{0,120}/.exec(log)?.[0] }).toEqual({ exited: false, crash: undefined });
    answers.forEach((res, i) => {
      expect(res.error).toBeUndefined();
      expect(res.status).toBe(200);
      expect(sha256(res.body)).toBe(image.blobs[i]?.digest);
    });
    const fills = upstream.requests.filter((r) => r.method === 'GET' && r.path.includes('/blobs/'));
    expect(fills).toHaveLength(32);
    // Every answer closed its connection: 32 connections for 32 GETs.
    expect(new Set(fills.map((r) => r.remotePort)).size).toBe(32);
    expect((await call(`${cache.url}/healthz`)).status).toBe(200);
  });
});
