import { writeFile } from 'node:fs/promises';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage } from '../support/fake-upstream.js';
import { sample } from '../support/exposition.js';
import { call } from '../support/http-client.js';
import { cacheToken } from '../support/registry-auth.js';

const A = { username: 'tenant-a', password: 'secret-pw-of-a' };
const B = { username: 'tenant-b', password: 'secret-pw-of-b' };

/** Tenants' stored manifests whose files prove unusable: dropped and fetched again with the asking client's credentials. */
describe('healing a stored manifest under AlwaysVerify', () => {
  let upstream: FakeUpstream;
  let cache: TestCache;
  const image = makeImage([3000, 4000]);

  beforeEach(async () => {
    upstream = await new FakeUpstream().start();
    upstream.auth = { kind: 'basic', users: { [A.username]: A.password, [B.username]: B.password } };
    upstream.push('private/app', 'v1', image);
  });

  afterEach(async () => {
    vi.restoreAllMocks();
    await cache?.stop();
    await upstream.stop();
  });

  const start = async (tagTtl = '1h'): Promise<void> => {
    cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'AlwaysVerify', tagTtl });
  };
  const auth = async (user: { username: string; password: string }): Promise<{ authorization: string }> => ({
    authorization: `Bearer ${await cacheToken(cache.url, upstream.host, 'private/app', user)}`,
  });
  const url = (reference: string): string => `${cache.url}/v2/private/app/manifests/${reference}?ns=${upstream.host}`;
  const corrupt = async (): Promise<void> => {
    await writeFile(cache.services.store.pathFor(image.manifestDigest), Buffer.alloc(image.manifest.length, 0x20));
    cache.services.manifests.forget([image.manifestDigest]);
  };
  const recordedHashes = (): number => cache.services.records.get(upstream.host, 'private/app', image.manifestDigest)?.credentialHashes.length ?? 0;
  /** Upstream GETs of the manifest by digest, and whether each carried credentials. */
  const digestGets = (): boolean[] =>
    upstream.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/manifests/${image.manifestDigest}`)).map((r) => r.headers.authorization !== undefined);

  it('a tag whose revalidation the upstream refuses, served from a record, is fetched again by digest with the client\'s credentials', async () => {
    await start('0s');
    const a = await auth(A);
    expect((await call(url('v1'), { headers: a })).status).toBe(200);
    upstream.fault = (r) => (r.path.endsWith('/manifests/v1') ? { kind: 'status', status: 403, body: '{"errors":[{"code":"DENIED","message":"no"}]}' } : undefined);
    // The stored answer stands in for the refused revalidation: A's record allows it.
    expect((await call(url('v1'), { headers: a })).status).toBe(200);
    await corrupt();
    const before = digestGets().length;
    const res = await call(url('v1'), { headers: a });
    expect(res.status).toBe(200);
    expect(res.body.equals(image.manifest)).toBe(true);
    expect(digestGets().slice(before)).toEqual([true]);
    expect(recordedHashes()).toBe(1);
  });

  it('counts a healed request once, as the upstream verification it took, not also as a local answer', async () => {
    await start();
    const a = await auth(A);
    const outcomes = async (): Promise<{ local: number; verified: number }> => {
      const text = (await call(`${cache.url}/metrics`)).body.toString();
      const count = (result: string): number => sample(text, 'registry_cache_credential_verifications_total', { policy: 'AlwaysVerify', result }) ?? 0;
      return { local: count('local'), verified: count('verified') };
    };
    expect((await call(url(image.manifestDigest), { headers: a })).status).toBe(200);
    expect((await call(url(image.manifestDigest), { headers: a })).status).toBe(200);
    expect(await outcomes()).toEqual({ local: 1, verified: 1 });
    await corrupt();
    expect((await call(url(image.manifestDigest), { headers: a })).status).toBe(200);
    expect(await outcomes()).toEqual({ local: 1, verified: 2 });
  });

  it('a request that found the file unusable before another request stored it again drops nothing: both tenants keep their records', async () => {
    await start();
    const [a, b] = [await auth(A), await auth(B)];
    expect((await call(url(image.manifestDigest), { headers: a })).status).toBe(200);
    expect((await call(url(image.manifestDigest), { headers: b })).status).toBe(200);
    expect(recordedHashes()).toBe(2);
    await corrupt();

    // A's read sees the corrupt file, and its answer is held until B has found it too, dropped it and stored it again.
    const store = cache.services.store;
    const readWhole = store.readWhole.bind(store);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let aRead!: () => void;
    const aHasRead = new Promise<void>((resolve) => (aRead = resolve));
    vi.spyOn(store, 'readWhole').mockImplementationOnce(async (digest, size) => {
      const outcome = await readWhole(digest, size).then(
        (bytes) => ({ bytes }),
        (err: unknown) => ({ err }),
      );
      aRead();
      await held;
      if ('err' in outcome) throw outcome.err;
      return outcome.bytes;
    });
    const aAnswer = call(url(image.manifestDigest), { headers: a });
    await aHasRead;
    const bAnswer = await call(url(image.manifestDigest), { headers: b });
    expect(bAnswer.status).toBe(200);
    expect(bAnswer.body.equals(image.manifest)).toBe(true);
    // B's drop took every record with the rows; B's fetch recorded B again.
    expect(recordedHashes()).toBe(1);
    release();
    const aRes = await aAnswer;
    expect(aRes.status).toBe(200);
    expect(aRes.body.equals(image.manifest)).toBe(true);
    // A's late failure did not drop what B stored: A proved access again and both records are there.
    expect(recordedHashes()).toBe(2);
    expect(cache.services.metadata.getManifest(image.manifestDigest)?.size).toBe(image.manifest.length);
  });
});
