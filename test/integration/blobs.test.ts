import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { controlDate, waitOutRetryAfter } from '../support/clock.js';
import { waitUntil } from '../support/daemon.js';
import { FakeUpstream, makeImage, sha256 } from '../support/fake-upstream.js';
import { call, errorCode } from '../support/http-client.js';

describe('blobs through the cache', () => {
  let upstream: FakeUpstream;
  let cache: TestCache;
  const image = makeImage([300_000, 2_000_000]);
  const layer = image.blobs[2] as { digest: string; bytes: Buffer };
  let blobUrl: string;

  beforeEach(async () => {
    upstream = await new FakeUpstream().start();
    upstream.push('team/app', '1.0', image);
    controlDate();
    cache = await startCache({ [upstream.host]: upstream.url });
    blobUrl = `${cache.url}/v2/team/app/blobs/${layer.digest}?ns=${upstream.host}`;
  });

  afterEach(async () => {
    vi.useRealTimers();
    await cache.stop();
    await upstream.stop();
  });

  it('fetches a blob once and serves the next request from disk', async () => {
    // As a client does: the manifest first, so the cache knows the layer's true size before it has the layer.
    expect((await call(`${cache.url}/v2/team/app/manifests/1.0?ns=${upstream.host}`)).status).toBe(200);
    const first = await call(blobUrl);
    expect(first.status).toBe(200);
    expect(sha256(first.body)).toBe(layer.digest);
    expect(first.headers['content-length']).toBe(String(layer.bytes.length));
    expect(first.headers['docker-content-digest']).toBe(layer.digest);
    expect(first.headers['accept-ranges']).toBe('bytes');
    expect(first.headers['content-encoding']).toBeUndefined();
    await cache.services.blobs.settle();
    const second = await call(blobUrl, { headers: { 'accept-encoding': 'gzip' } });
    expect(second.status).toBe(200);
    expect(second.body.equals(layer.bytes)).toBe(true);
    expect(second.headers['content-encoding']).toBeUndefined();
    expect(upstream.count('GET', /\/blobs\//)).toBe(1);
  });

  it('collapses concurrent requests for one digest into a single upstream fetch', async () => {
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'slow', chunkBytes: 200_000, delayMs: 10 } : undefined);
    const responses = await Promise.all(Array.from({ length: 12 }, () => call(blobUrl)));
    for (const res of responses) {
      expect(res.status).toBe(200);
      expect(res.error).toBeUndefined();
      expect(sha256(res.body)).toBe(layer.digest);
    }
    expect(upstream.count('GET', /\/blobs\//)).toBe(1);
  });

  it('never serves a wrong-digest upstream blob complete and never stores it', async () => {
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'wrong-bytes' } : undefined);
    const res = await call(blobUrl);
    expect(res.error).toBeDefined();
    expect(res.body.length).toBeLessThan(layer.bytes.length);
    await cache.services.blobs.settle();
    expect(cache.services.metadata.getBlob(layer.digest)).toBeUndefined();
    expect(await cache.services.store.size(layer.digest)).toBeUndefined();
    expect(await readdir(join(cache.storage, 'tmp'))).toEqual([]);
    upstream.fault = () => undefined;
    // Backing off: the same error again, with Retry-After, and no upstream request.
    const backingOff = await call(blobUrl);
    expect(backingOff.status).toBe(502);
    expect(errorCode(backingOff)).toBe('DIGEST_INVALID');
    expect(backingOff.headers['retry-after']).toBe('10');
    expect(upstream.count('GET', /\/blobs\//)).toBe(1);
    waitOutRetryAfter(backingOff);
    const retry = await call(blobUrl);
    expect(sha256(retry.body)).toBe(layer.digest);
    expect(upstream.count('GET', /\/blobs\//)).toBe(2);
  });

  it('ends the client response with an error when the upstream body is cut short', async () => {
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'truncate', afterBytes: 500_000 } : undefined);
    const res = await call(blobUrl);
    expect(res.status).toBe(200);
    expect(res.error).toBeDefined();
    expect(res.body.length).toBeLessThan(layer.bytes.length);
    await cache.services.blobs.settle();
    expect(cache.services.metadata.getBlob(layer.digest)).toBeUndefined();
  });

  it('keeps filling after the client disconnects, and later requests are hits', async () => {
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'slow', chunkBytes: 100_000, delayMs: 5 } : undefined);
    const res = await call(blobUrl, { abortAfterBytes: 100_000 });
    expect(res.error?.message).toBe('aborted by test');
    await cache.services.blobs.settle();
    expect(cache.services.metadata.getBlob(layer.digest)?.size).toBe(layer.bytes.length);
    const again = await call(blobUrl);
    expect(sha256(again.body)).toBe(layer.digest);
    expect(upstream.count('GET', /\/blobs\//)).toBe(1);
  });

  it('answers HEAD without reading any blob, cold or stored', async () => {
    const openRead = vi.spyOn(cache.services.store, 'openRead');
    expect((await call(`${cache.url}/v2/team/app/manifests/1.0?ns=${upstream.host}`)).status).toBe(200);
    const cold = await call(blobUrl, { method: 'HEAD' });
    expect(cold.status).toBe(200);
    expect(cold.headers['content-length']).toBe(String(layer.bytes.length));
    expect(cold.headers['docker-content-digest']).toBe(layer.digest);
    expect(upstream.count('GET', /\/blobs\//)).toBe(0);
    const heads = upstream.count('HEAD', /\/blobs\//);
    expect(heads).toBeGreaterThanOrEqual(1);
    await call(blobUrl);
    await cache.services.blobs.settle();
    openRead.mockClear();
    const warm = await call(blobUrl, { method: 'HEAD' });
    expect(warm.status).toBe(200);
    expect(warm.body.length).toBe(0);
    expect(openRead).not.toHaveBeenCalled();
    expect(upstream.count('HEAD', /\/blobs\//)).toBe(heads);
  });

  it('serves a single Range with 206 from a stored blob', async () => {
    await call(blobUrl);
    await cache.services.blobs.settle();
    const res = await call(blobUrl, { headers: { range: 'bytes=1000-1999' } });
    expect(res.status).toBe(206);
    expect(res.headers['content-range']).toBe(`bytes 1000-1999/${layer.bytes.length}`);
    expect(res.body.equals(layer.bytes.subarray(1000, 2000))).toBe(true);
    const suffix = await call(blobUrl, { headers: { range: 'bytes=-10' } });
    expect(suffix.body.equals(layer.bytes.subarray(layer.bytes.length - 10))).toBe(true);
    const bad = await call(blobUrl, { headers: { range: `bytes=${layer.bytes.length}-` } });
    expect(bad.status).toBe(416);
    expect(bad.headers['content-range']).toBe(`bytes */${layer.bytes.length}`);
  });

  it('serves Range requests from a blob that is still downloading', async () => {
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'slow', chunkBytes: 100_000, delayMs: 15 } : undefined);
    const full = call(blobUrl);
    // The fill is running (it asked the upstream) before the ranges are asked for.
    await waitUntil('the fill started', async () => upstream.count('GET', /\/blobs\//) === 1, { intervalMs: 2 });
    const [head, tail] = await Promise.all([
      call(blobUrl, { headers: { range: 'bytes=0-99999' } }),
      call(blobUrl, { headers: { range: 'bytes=1500000-1999999' } }),
    ]);
    expect(head.status).toBe(206);
    expect(head.body.equals(layer.bytes.subarray(0, 100_000))).toBe(true);
    expect(tail.status).toBe(206);
    expect(tail.headers['content-range']).toBe(`bytes 1500000-1999999/${layer.bytes.length}`);
    expect(tail.body.equals(layer.bytes.subarray(1_500_000, 2_000_000))).toBe(true);
    expect(sha256((await full).body)).toBe(layer.digest);
    expect(upstream.count('GET', /\/blobs\//)).toBe(1);
  });

  it('maps upstream failures to OCI errors', async () => {
    const missing = await call(`${cache.url}/v2/team/app/blobs/sha256:${'0'.repeat(64)}?ns=${upstream.host}`);
    expect(missing.status).toBe(404);
    expect(errorCode(missing)).toBe('BLOB_UNKNOWN');

    upstream.fault = () => ({ kind: 'status', status: 429, headers: { 'retry-after': '17' } });
    const limited = await call(blobUrl);
    expect(limited.status).toBe(429);
    expect(errorCode(limited)).toBe('TOOMANYREQUESTS');
    expect(limited.headers['retry-after']).toBe('17');

    waitOutRetryAfter(limited);
    upstream.fault = () => ({ kind: 'status', status: 500 });
    const broken = await call(blobUrl);
    expect(broken.status).toBe(502);
    expect(errorCode(broken)).toBe('UNAVAILABLE');
    // The failure backs off: the next answer says when to come back.
    const backingOff = await call(blobUrl);
    expect(backingOff.status).toBe(502);
    expect(errorCode(backingOff)).toBe('UNAVAILABLE');

    // Refused anonymously: the client is asked for credentials; refused with them: DENIED.
    waitOutRetryAfter(backingOff);
    upstream.fault = () => ({ kind: 'status', status: 403 });
    const challenged = await call(blobUrl);
    expect(challenged.status).toBe(401);
    expect(challenged.headers['www-authenticate']).toMatch(/^Bearer realm="http:\/\/127\.0\.0\.1:\d+\/auth\/token\?ns=/);
    const denied = await call(blobUrl, { headers: { authorization: `Basic ${Buffer.from('u:p').toString('base64')}` } });
    expect(denied.status).toBe(403);
    expect(errorCode(denied)).toBe('DENIED');
  });
});
