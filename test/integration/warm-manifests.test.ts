import { appendFile, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage } from '../support/fake-upstream.js';
import { call, errorCode } from '../support/http-client.js';

describe('warm manifests: bytes and repository links remembered in memory', () => {
  let upstream: FakeUpstream;
  let cache: TestCache;
  const image = makeImage([1000, 2000]);

  beforeEach(async () => {
    upstream = await new FakeUpstream().start();
    upstream.push('team/app', '1.0', image);
    upstream.push('team/mirror', '1.0', image);
  });

  afterEach(async () => {
    await cache?.stop();
    await upstream.stop();
  });

  const byDigest = (repo: string): string => `${cache.url}/v2/${repo}/manifests/${image.manifestDigest}?ns=${upstream.host}`;

  /** Evicts everything the store holds through the server's own evictor (usage far above any threshold). */
  async function evictEverything(): Promise<void> {
    const result = await cache.services.evictor.collect();
    expect(result.evicted.map((e) => e.root)).toContain(image.manifestDigest);
    expect(cache.services.metadata.getManifest(image.manifestDigest)).toBeUndefined();
  }

  it('serves a stored manifest from memory once read: the file is not read again', async () => {
    cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify' });
    expect((await call(byDigest('team/app'))).body.equals(image.manifest)).toBe(true);
    // Same length, other bytes: a read of the file would now serve these.
    await writeFile(cache.services.store.pathFor(image.manifestDigest), Buffer.alloc(image.manifest.length, 0x20));
    for (let i = 0; i < 3; i++) {
      const res = await call(byDigest('team/app'));
      expect(res.status).toBe(200);
      expect(res.body.equals(image.manifest)).toBe(true);
    }
    expect(upstream.count('GET', /\/manifests\//)).toBe(1);
  });

  it('asks for the manifest row once per hit by digest, and the server (the lock holder) answers it without a SELECT', async () => {
    cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify' });
    // The miss asks the database twice (is it stored; again before storing it), the first hit once.
    const selects = vi.spyOn(cache.services.metadata, 'getManifest');
    for (let i = 0; i < 2; i++) expect((await call(byDigest('team/app'))).status).toBe(200);
    expect(selects).toHaveBeenCalledTimes(3);
    selects.mockClear();
    const rows = vi.spyOn(cache.services.metadata, 'storedManifest');
    for (let i = 0; i < 3; i++) {
      const res = await call(byDigest('team/app'));
      expect(res.status).toBe(200);
      expect(res.body.equals(image.manifest)).toBe(true);
    }
    expect(rows.mock.calls.map(([digest]) => digest)).toEqual([image.manifestDigest, image.manifestDigest, image.manifestDigest]);
    expect(selects).not.toHaveBeenCalled();
  });

  it('asks the database first: an evicted manifest is not served from memory', async () => {
    cache = await startCache(
      { [upstream.host]: upstream.url },
      { imagePullCredentialsVerificationPolicy: 'NeverVerify', maxStorageBytes: 1, imageGCHighThresholdPercent: 1, imageGCLowThresholdPercent: 0, gcInterval: '1h' },
    );
    expect((await call(byDigest('team/app'))).status).toBe(200);
    await evictEverything();
    // The manifest is gone upstream too: the only copy left would be the one in memory.
    upstream.fault = (r) => (r.path.includes('/manifests/') ? { kind: 'status', status: 404 } : undefined);
    const res = await call(byDigest('team/app'));
    expect(res.status).toBe(404);
    expect(errorCode(res)).toBe('MANIFEST_UNKNOWN');
    expect(upstream.count('GET', /\/manifests\//)).toBe(2);
    // And the evicted bytes no longer take memory.
    expect(cache.services.manifests.holdsInMemory(image.manifestDigest)).toBe(false);
  });

  it('links each repository a manifest is served through once, and again after eviction deleted the links', async () => {
    cache = await startCache(
      { [upstream.host]: upstream.url },
      { imagePullCredentialsVerificationPolicy: 'NeverVerify', maxStorageBytes: 1, imageGCHighThresholdPercent: 1, imageGCLowThresholdPercent: 0, gcInterval: '1h' },
    );
    const { metadata } = cache.services;
    const linked = (repo: string): boolean => metadata.isLinked(upstream.host, repo, image.manifestDigest);
    // Fetched through team/app, then served from the store through team/mirror: both are links.
    expect((await call(byDigest('team/app'))).status).toBe(200);
    expect((await call(byDigest('team/mirror'))).status).toBe(200);
    expect(linked('team/app') && linked('team/mirror')).toBe(true);
    await evictEverything();
    expect(linked('team/app') || linked('team/mirror')).toBe(false);
    // Fetched again through team/app; team/mirror, served from the store, must be linked again although this
    // process linked it before the eviction (its blobs are found from the repository through that link).
    expect((await call(byDigest('team/app'))).status).toBe(200);
    expect((await call(byDigest('team/mirror'))).status).toBe(200);
    expect(upstream.count('GET', /\/manifests\//)).toBe(2);
    expect(linked('team/mirror')).toBe(true);
    const layer = image.blobs[0];
    if (!layer) throw new Error('image without blobs');
    expect((await call(`${cache.url}/v2/team/mirror/blobs/${layer.digest}?ns=${upstream.host}`)).status).toBe(200);
  });

  it.each([
    { which: 'small manifest (read synchronously)', layers: 2, large: false },
    { which: 'manifest over 16 KiB (read on the thread pool)', layers: 150, large: true },
  ])('never serves a stored $which whose file is missing, not the size its row says or not its digest: fetches it again', async ({ layers, large }) => {
    const img = makeImage(Array.from({ length: layers }, () => 10));
    expect(img.manifest.length > 16 * 1024).toBe(large);
    upstream.push('team/sized', '1.0', img);
    cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify' });
    const url = `${cache.url}/v2/team/sized/manifests/${img.manifestDigest}?ns=${upstream.host}`;
    expect((await call(url)).body.equals(img.manifest)).toBe(true);
    const file = cache.services.store.pathFor(img.manifestDigest);
    const corruptions: Array<{ name: string; corrupt: () => Promise<void> }> = [
      { name: 'short', corrupt: () => truncate(file, img.manifest.length - 1) },
      { name: 'long', corrupt: () => appendFile(file, '\n') },
      // Same length, other bytes (a flipped bit): only the digest tells.
      { name: 'same length', corrupt: () => writeFile(file, Buffer.from(img.manifest).fill(0x20, 0, 1)) },
      { name: 'missing', corrupt: () => rm(file) },
    ];
    let fetches = upstream.count('GET', /\/manifests\//);
    for (const { name, corrupt } of corruptions) {
      await corrupt();
      // Read from the file again, not from the bytes remembered at the first answer.
      cache.services.manifests.forget([img.manifestDigest]);
      const res = await call(url);
      fetches++;
      expect({ name, status: res.status, served: res.body.equals(img.manifest), fetches: upstream.count('GET', /\/manifests\//) }).toEqual({
        name,
        status: 200,
        served: true,
        fetches,
      });
      // Stored again, whole: the next reads need no upstream.
      expect((await readFile(file)).equals(img.manifest)).toBe(true);
      expect(cache.services.metadata.getManifest(img.manifestDigest)?.size).toBe(img.manifest.length);
    }
    cache.services.manifests.forget([img.manifestDigest]);
    expect((await call(url)).body.equals(img.manifest)).toBe(true);
    expect(upstream.count('GET', /\/manifests\//)).toBe(fetches);
  });

  it.each([
    { how: 'a fresh tag answered from the store', tagTtl: '1h', corrupt: (file: string) => writeFile(file, 'not the manifest') },
    { how: 'a tag revalidated by HEAD whose file went before it was read', tagTtl: '0s', corrupt: (file: string) => rm(file) },
  ])('fetches $how again when its stored file is unusable', async ({ tagTtl, corrupt }) => {
    cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify', tagTtl });
    const byTag = `${cache.url}/v2/team/app/manifests/1.0?ns=${upstream.host}`;
    expect((await call(byTag)).body.equals(image.manifest)).toBe(true);
    await corrupt(cache.services.store.pathFor(image.manifestDigest));
    cache.services.manifests.forget([image.manifestDigest]);
    const res = await call(byTag);
    expect(res.status).toBe(200);
    expect(res.body.equals(image.manifest)).toBe(true);
    expect(res.headers['docker-content-digest']).toBe(image.manifestDigest);
    expect(upstream.count('GET', /\/manifests\/1\.0/)).toBe(2);
    expect((await readFile(cache.services.store.pathFor(image.manifestDigest))).equals(image.manifest)).toBe(true);
  });

  it('drops an unusable stored manifest the upstream no longer has: the answer a miss gets, not a 500', async () => {
    cache = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify' });
    expect((await call(byDigest('team/app'))).status).toBe(200);
    const file = cache.services.store.pathFor(image.manifestDigest);
    await writeFile(file, Buffer.alloc(image.manifest.length, 0x20));
    cache.services.manifests.forget([image.manifestDigest]);
    upstream.fault = (r) => (r.path.includes('/manifests/') ? { kind: 'status', status: 404 } : undefined);
    const res = await call(byDigest('team/app'));
    expect(res.status).toBe(404);
    expect(errorCode(res)).toBe('MANIFEST_UNKNOWN');
    expect(cache.services.metadata.getManifest(image.manifestDigest)).toBeUndefined();
    await expect(readFile(file)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
