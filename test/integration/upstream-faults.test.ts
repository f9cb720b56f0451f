import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { controlDate, waitOutRetryAfter } from '../support/clock.js';
import { FakeUpstream, makeImage, sha256, type Fault } from '../support/fake-upstream.js';
import { call, errorCode } from '../support/http-client.js';

/** Faults inside an upstream body (after a 200 and its headers), and the answer each must give. */
const BODY_FAULTS: { name: string; fault: Fault; status: number }[] = [
  { name: 'a Content-Length longer than the body, then a close', fault: { kind: 'content-length', delta: 1000, then: 'close' }, status: 502 },
  { name: 'a reset mid-body', fault: { kind: 'reset', afterBytes: 10 }, status: 502 },
  { name: 'a stall mid-body', fault: { kind: 'stall', afterBytes: 10 }, status: 504 },
];

describe('upstream body faults', () => {
  let upstream: FakeUpstream;
  let cache: TestCache;
  const image = makeImage([300_000, 2_000_000]);
  const layer = image.blobs[2] as { digest: string; bytes: Buffer };
  let blobUrl: string;
  let manifestUrl: string;

  beforeEach(async () => {
    upstream = await new FakeUpstream().start();
    upstream.push('team/app', '1.0', image);
    controlDate();
    // A short idle limit makes a stalled body fail in the test's time.
    cache = await startCache({}, { registries: { [upstream.host]: { url: upstream.url, idleTimeout: '300ms' } }, defaultRegistry: upstream.host });
    blobUrl = `${cache.url}/v2/team/app/blobs/${layer.digest}?ns=${upstream.host}`;
    manifestUrl = `${cache.url}/v2/team/app/manifests/1.0?ns=${upstream.host}`;
  });

  afterEach(async () => {
    vi.useRealTimers();
    await cache.stop();
    await upstream.stop();
  });

  describe.each(BODY_FAULTS)('$name', ({ fault, status }) => {
    it(`fails a manifest with ${status} UNAVAILABLE, not 500, and backs off`, async () => {
      upstream.fault = (r) => (r.method === 'GET' && r.path.includes('/manifests/') ? fault : undefined);
      const res = await call(manifestUrl);
      expect(res.status).toBe(status);
      expect(errorCode(res)).toBe('UNAVAILABLE');
      upstream.fault = () => undefined;
      const again = await call(manifestUrl);
      expect(again.status).toBe(status);
      expect(again.headers['retry-after']).toBe('10');
      expect(upstream.count('GET', /\/manifests\//)).toBe(1);
    });

    it(`fails a tags list with ${status} UNAVAILABLE, not 500`, async () => {
      upstream.fault = (r) => (r.path.endsWith('/tags/list') ? fault : undefined);
      const res = await call(`${cache.url}/v2/team/app/tags/list?ns=${upstream.host}`);
      expect(res.status).toBe(status);
      expect(errorCode(res)).toBe('UNAVAILABLE');
    });

    it(`cuts the blob answer, stores nothing, and backs off with ${status} UNAVAILABLE`, async () => {
      upstream.fault = (r) => (r.method === 'GET' && r.path.includes('/blobs/') ? fault : undefined);
      const res = await call(blobUrl);
      // Cut after its 200, or refused before any byte when the fill failed first: never a complete answer, never 500.
      expect(['cut', status]).toContain(res.error ? 'cut' : res.status);
      expect(res.body.length).toBeLessThan(layer.bytes.length);
      await cache.services.blobs.settle();
      expect(cache.services.metadata.getBlob(layer.digest)).toBeUndefined();
      upstream.fault = () => undefined;
      const again = await call(blobUrl);
      expect(again.status).toBe(status);
      expect(errorCode(again)).toBe('UNAVAILABLE');
      expect(again.headers['retry-after']).toBe('10');
      expect(upstream.count('GET', /\/blobs\//)).toBe(1);
      waitOutRetryAfter(again);
      expect(sha256((await call(blobUrl)).body)).toBe(layer.digest);
    });
  });

  describe('unverified bytes and sizes', () => {
    const blobFault = (fault: Fault): void => {
      upstream.fault = (r) => (r.path.includes('/blobs/') ? fault : undefined);
    };
    /** The client pulls the manifest first, as every image client does: the cache then knows the layer's size. */
    const pullManifest = async (): Promise<void> => {
      expect((await call(manifestUrl)).status).toBe(200);
    };
    const outcome = (res: Awaited<ReturnType<typeof call>>): string | number => (res.error ? 'cut' : res.status);

    it('never completes a 206 for an early range of a fill whose bytes turn out wrong (size known from the manifest)', async () => {
      await pullManifest();
      blobFault({ kind: 'slow', chunkBytes: 100_000, delayMs: 10, flipAt: 10 });
      const res = await call(blobUrl, { headers: { range: 'bytes=0-99999' } });
      expect(['cut', 502]).toContain(outcome(res));
      expect(res.body.length).toBeLessThan(100_000);
    });

    it('answers an early range of a fill whose bytes turn out wrong with 502 DIGEST_INVALID when the size is unknown', async () => {
      blobFault({ kind: 'slow', chunkBytes: 100_000, delayMs: 10, flipAt: 10 });
      const res = await call(blobUrl, { headers: { range: 'bytes=0-99999' } });
      expect(res.status).toBe(502);
      expect(errorCode(res)).toBe('DIGEST_INVALID');
    });

    it('serves a range from a running fill with the manifest size as total, completing it once the fill verifies', async () => {
      await pullManifest();
      blobFault({ kind: 'slow', chunkBytes: 100_000, delayMs: 10 });
      const res = await call(blobUrl, { headers: { range: 'bytes=0-99999' } });
      const answeredAt = performance.now();
      expect(res.status).toBe(206);
      expect(res.error).toBeUndefined();
      expect(res.headers['content-range']).toBe(`bytes 0-99999/${layer.bytes.length}`);
      expect(res.body.equals(layer.bytes.subarray(0, 100_000))).toBe(true);
      // Its last byte waited for the whole body (20 chunks), not only for the first chunk that holds the range.
      const fill = upstream.requests.find((r) => r.method === 'GET' && r.path.includes('/blobs/'));
      expect(fill?.endedAt).toBeLessThan(answeredAt);
    });

    it('never answers 416 for a valid range because of a short upstream Content-Length', async () => {
      blobFault({ kind: 'content-length', delta: -1_000_000, then: 'close' });
      const res = await call(blobUrl, { headers: { range: 'bytes=1500000-1500099' } });
      expect(res.status).toBe(502);
      expect(res.headers['content-range']).toBeUndefined();
      upstream.fault = () => undefined;
      await cache.services.blobs.settle();
      const backingOff = await call(blobUrl, { headers: { range: 'bytes=1500000-1500099' } });
      expect(backingOff.status).toBe(502);
      expect(backingOff.headers['content-range']).toBeUndefined();
      waitOutRetryAfter(backingOff);
      const ok = await call(blobUrl, { headers: { range: 'bytes=1500000-1500099' } });
      expect(ok.status).toBe(206);
      expect(ok.headers['content-range']).toBe(`bytes 1500000-1500099/${layer.bytes.length}`);
      expect(ok.body.equals(layer.bytes.subarray(1_500_000, 1_500_100))).toBe(true);
    });

    it('never puts a long upstream Content-Length into a Content-Range total or a Content-Length', async () => {
      blobFault({ kind: 'content-length', delta: 1000, then: 'hang' });
      const [ranged, whole] = await Promise.all([call(blobUrl, { headers: { range: 'bytes=0-99' } }), call(blobUrl)]);
      expect(ranged.status).toBe(504);
      expect(ranged.headers['content-range']).toBeUndefined();
      expect(whole.headers['content-length']).toBeUndefined();
      expect(whole.error).toBeDefined();
    });

    it('fails a fill at once when the upstream Content-Length contradicts the manifest', async () => {
      await pullManifest();
      blobFault({ kind: 'content-length', delta: 1000, then: 'hang' });
      const res = await call(blobUrl, { headers: { range: 'bytes=0-99' } });
      expect(res.status).toBe(502);
      expect(errorCode(res)).toBe('SIZE_INVALID');
    });

    it('gives a cold HEAD and GET the manifest size as Content-Length, or none, never the upstream one', async () => {
      blobFault({ kind: 'content-length', delta: 1000, then: 'close' });
      const unknown = await call(blobUrl, { method: 'HEAD' });
      expect(unknown.status).toBe(200);
      expect(unknown.headers['content-length']).toBeUndefined();
      expect(unknown.headers['docker-content-digest']).toBe(layer.digest);
      await pullManifest();
      const known = await call(blobUrl, { method: 'HEAD' });
      expect(known.status).toBe(200);
      expect(known.headers['content-length']).toBe(String(layer.bytes.length));
      upstream.fault = () => undefined;
      const cold = await call(blobUrl);
      expect(cold.headers['content-length']).toBe(String(layer.bytes.length));
      expect(sha256(cold.body)).toBe(layer.digest);
    });
  });
});
