import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage } from '../support/fake-upstream.js';
import { call, errorCode, type TestResponse } from '../support/http-client.js';

describe('distribution-spec conformance of the pull API', () => {
  let upstream: FakeUpstream;
  let cache: TestCache;
  beforeEach(async () => {
    upstream = await new FakeUpstream().start();
    cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify' });
  });
  afterEach(async () => {
    await cache.stop();
    await upstream.stop();
  });

  it.each([['.INVALID_MANIFEST_NAME'], ['-bad'], ['x'.repeat(129)]])(
    'answers a manifest by the invalid reference %s with 404 MANIFEST_UNKNOWN without contacting the upstream',
    async (reference) => {
      for (const method of ['GET', 'HEAD']) {
        const res = await call(`${cache.url}/v2/app/manifests/${reference}?ns=${upstream.host}`, { method });
        expect(res.status).toBe(404);
        if (method === 'GET') expect(errorCode(res)).toBe('MANIFEST_UNKNOWN');
      }
      expect(upstream.requests).toHaveLength(0);
    },
  );

  it('applies n and last to the tag list when the upstream ignores them, with a Link to the next page', async () => {
    upstream.paginateTags = false;
    const image = makeImage([10]);
    for (const tag of ['1.0', '2.0', '3.0', '4.0', '5.0']) upstream.push('org/app', tag, image);
    const list = async (query: string) => {
      const res = await call(`${cache.url}/v2/org/app/tags/list?ns=${upstream.host}${query}`);
      expect(res.status).toBe(200);
      return { tags: (JSON.parse(res.body.toString()) as { tags: string[] }).tags, link: res.headers.link };
    };
    // The upstream answers the whole list to every question.
    expect((await list('')).tags).toEqual(['1.0', '2.0', '3.0', '4.0', '5.0']);
    const first = await list('&n=2');
    expect(first).toEqual({ tags: ['1.0', '2.0'], link: `</v2/org/app/tags/list?n=2&last=2.0&ns=${encodeURIComponent(upstream.host)}>; rel="next"` });
    const second = await list('&n=2&last=2.0');
    expect(second.tags).toEqual(['3.0', '4.0']);
    expect(second.link).toContain('last=4.0');
    const third = await list('&n=2&last=4.0');
    expect(third).toEqual({ tags: ['5.0'], link: undefined });
    expect((await list('&last=3.0')).tags).toEqual(['4.0', '5.0']);
    expect((await list('&n=0')).tags).toEqual([]);
    expect(upstream.requests.every((r) => r.path === '/v2/org/app/tags/list')).toBe(true);
  });

  it('answers a manifest PUT with a manifest content type 405 UNSUPPORTED like every other write', async () => {
    const body = JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', layers: [] });
    for (const contentType of ['application/vnd.oci.image.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v2+json', 'application/json', 'application/octet-stream']) {
      const res = await send(`${cache.url}/v2/app/manifests/1.0?ns=${upstream.host}`, 'PUT', contentType, body);
      expect(res.status, contentType).toBe(405);
      expect(errorCode(res), contentType).toBe('UNSUPPORTED');
    }
    expect(upstream.requests).toHaveLength(0);
  });
});

/** A request with a body (the shared `call` sends none). */
async function send(url: string, method: string, contentType: string, body: string): Promise<TestResponse> {
  const res = await fetch(url, { method, headers: { 'content-type': contentType }, body });
  return { status: res.status, headers: Object.fromEntries(res.headers), body: Buffer.from(await res.arrayBuffer()) };
}
