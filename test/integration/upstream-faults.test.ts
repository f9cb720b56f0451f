import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
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
    // A short idle limit makes a stalled body fail in the test's time.
    cache = await startCache({}, { registries: { [upstream.host]: { url: upstream.url, idleTimeout: '300ms' } }, defaultRegistry: upstream.host });
    blobUrl = `${cache.url}/v2/team/app/blobs/${layer.digest}?ns=${upstream.host}`;
    manifestUrl = `${cache.url}/v2/team/app/manifests/1.0?ns=${upstream.host}`;
  });

  afterEach(async () => {
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
      cache.services.pulls.backoff.success(`${upstream.host}/team/app@${layer.digest}`);
      expect(sha256((await call(blobUrl)).body)).toBe(layer.digest);
    });
  });
});
