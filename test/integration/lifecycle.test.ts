import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile, writeFile, mkdtemp, rm } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { randomBytes } from 'node:crypto';
import { FakeUpstream, makeImage, makeImageFrom, sha256, sleep, type FakeImage } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';
import { cacheToken } from '../support/registry-auth.js';
import { runCli } from '../support/cli.js';

const KB = 1000;

describe('cache lifecycle', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function upstreamWith(images: Record<string, FakeImage>): Promise<FakeUpstream> {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    for (const [repo, image] of Object.entries(images)) upstream.push(repo, 'v1', image);
    return upstream;
  }

  async function pullAll(cache: TestCache, upstream: FakeUpstream, repo: string, image: FakeImage, headers: Record<string, string> = {}): Promise<void> {
    expect((await call(`${cache.url}/v2/${repo}/manifests/v1?ns=${upstream.host}`, { headers })).status).toBe(200);
    for (const b of image.blobs) {
      const res = await call(`${cache.url}/v2/${repo}/blobs/${b.digest}?ns=${upstream.host}`, { headers });
      expect(sha256(res.body)).toBe(b.digest);
    }
    await cache.services.blobs.settle();
    // Eviction is scheduled for the tick after a download ends.
    await new Promise((r) => setImmediate(r));
    await cache.services.evictor.idle();
  }

  it('evicts least recently used images past the high mark down to the low mark, keeping shared and pinned content', async () => {
    const sharedLayer = randomBytes(30 * KB);
    const images: Record<string, FakeImage> = {
      'app/one': makeImage([30 * KB]),
      'app/two': makeImageFrom([sharedLayer]),
      'app/pause': makeImage([5 * KB]),
      'app/three': makeImage([30 * KB]),
      // app/four shares its layer with app/two.
      'app/four': makeImageFrom([sharedLayer, randomBytes(KB)]),
    };
    const upstream = await upstreamWith(images);
    const cache = await startCache(
      { [upstream.host]: upstream.url },
      { maxStorageBytes: 100 * KB, imageGCHighThresholdPercent: 85, imageGCLowThresholdPercent: 60, pinnedImages: [`${upstream.host}/app/pause:v1`], gcInterval: '1h' },
    );
    cleanup.push(() => cache.stop());
    for (const repo of ['app/pause', 'app/one', 'app/two']) {
      await pullAll(cache, upstream, repo, images[repo] as FakeImage);
      await sleep(5);
    }
    // ~67 KB stored: under 85 %, nothing goes.
    expect(cache.services.metadata.getManifest((images['app/one'] as FakeImage).manifestDigest)).toBeDefined();
    // Touch app/one so app/two becomes the least recently used unpinned image.
    await call(`${cache.url}/v2/app/one/manifests/${(images['app/one'] as FakeImage).manifestDigest}?ns=${upstream.host}`);
    await sleep(5);
    await pullAll(cache, upstream, 'app/three', images['app/three'] as FakeImage);
    const has = (repo: string): boolean => cache.services.metadata.getManifest((images[repo] as FakeImage).manifestDigest) !== undefined;
    expect(has('app/pause')).toBe(true);
    expect(has('app/two')).toBe(false);
    expect(has('app/one')).toBe(false);
    expect(has('app/three')).toBe(true);
    expect(cache.services.metadata.storedBytes()).toBeLessThanOrEqual(60 * KB);
    for (const b of (images['app/two'] as FakeImage).blobs) expect(await cache.services.store.size(b.digest)).toBeUndefined();
    const metrics = (await call(`${cache.url}/metrics`)).body.toString();
    expect(metrics).toMatch(/registry_cache_evictions_total 2/);

    // Shared layers stay while another kept image references them.
    const store = cache.services;
    await pullAll(cache, upstream, 'app/two', images['app/two'] as FakeImage);
    await pullAll(cache, upstream, 'app/four', images['app/four'] as FakeImage);
    const units = await store.evictor.units();
    const sharedDigest = sha256(sharedLayer);
    expect(units.filter((u) => u.members.includes(sharedDigest))).toHaveLength(2);
    // Evicting app/two alone frees only what app/four does not also hold.
    const twoUnit = units.find((u) => u.root === (images['app/two'] as FakeImage).manifestDigest);
    expect(twoUnit?.members).toContain(sharedDigest);
    const shrink = new (await import('../../src/lifecycle/eviction.js')).Evictor({
      store: store.store,
      metadata: store.metadata,
      settings: { highThresholdPercent: 1, lowThresholdPercent: 0, maxStorageBytes: 1_000_000, pinnedImages: [`${upstream.host}/app/pause:v1`, `${upstream.host}/app/three:v1`, `${upstream.host}/app/four:v1`] },
      log: store.log,
      isBusy: () => false,
    });
    await shrink.collect();
    expect(cache.services.metadata.getManifest((images['app/two'] as FakeImage).manifestDigest)).toBeUndefined();
    expect(cache.services.metadata.getBlob(sharedDigest)).toBeDefined();
    expect(await cache.services.store.size(sharedDigest)).toBe(sharedLayer.length);
  });

  it('never evicts a blob while it is being served, and removes pull records with their content', async () => {
    // Larger than loopback socket buffers, so a paused client really keeps the file open.
    const big = makeImage([24_000_000]);
    const small = makeImage([10 * KB]);
    const upstream = await upstreamWith({ 'app/big': big, 'app/small': small });
    upstream.auth = { kind: 'basic', users: { alice: 'alice-pw' } };
    const cache = await startCache({ [upstream.host]: upstream.url }, { maxStorageBytes: 100_000_000, gcInterval: '1h' });
    cleanup.push(() => cache.stop());
    const token = (repo: string) => cacheToken(cache.url, upstream.host, repo, { username: 'alice', password: 'alice-pw' });
    const bigHeaders = { authorization: `Bearer ${await token('app/big')}` };
    await pullAll(cache, upstream, 'app/big', big, bigHeaders);
    await pullAll(cache, upstream, 'app/small', small, { authorization: `Bearer ${await token('app/small')}` });
    expect(cache.services.records.get(upstream.host, 'app/small', small.manifestDigest)?.credentialHashes).toHaveLength(1);

    // A client that reads the big layer slowly: the server's stream stays open.
    const layer = big.blobs[1] as { digest: string; bytes: Buffer };
    const url = new URL(`${cache.url}/v2/app/big/blobs/${layer.digest}?ns=${upstream.host}`);
    const chunks: Buffer[] = [];
    const slow = await new Promise<import('node:http').IncomingMessage>((resolve) =>
      httpRequest({ host: url.hostname, port: url.port, path: url.pathname + url.search, headers: bigHeaders, agent: false }, resolve).end(),
    );
    slow.pause();
    await sleep(50);
    expect(cache.services.blobs.isBusy(layer.digest)).toBe(true);

    // Shrink the bound so everything should go, and collect.
    const evictor = new (await import('../../src/lifecycle/eviction.js')).Evictor({
      store: cache.services.store,
      metadata: cache.services.metadata,
      settings: { highThresholdPercent: 85, lowThresholdPercent: 0, maxStorageBytes: 1000, pinnedImages: [] },
      log: cache.services.log,
      isBusy: (d) => cache.services.blobs.isBusy(d),
    });
    const result = await evictor.collect();
    expect(result.skippedBusy).toBe(1);
    expect(cache.services.metadata.getBlob(layer.digest)).toBeDefined();
    expect(cache.services.metadata.getManifest(small.manifestDigest)).toBeUndefined();
    expect(cache.services.records.get(upstream.host, 'app/small', small.manifestDigest)).toBeUndefined();
    // Orphaned credential rows would not show through records.get (it starts from the record row): read the table.
    const inspect = new Database(join(cache.storage, 'registry-cache.db'), { readonly: true });
    const leftover = inspect.prepare('SELECT COUNT(*) FROM pull_record_credentials WHERE digest = ?').pluck().get(small.manifestDigest);
    inspect.close();
    expect(leftover).toBe(0);

    slow.on('data', (c: Buffer) => chunks.push(c));
    slow.resume();
    await new Promise((r) => slow.on('end', r));
    expect(sha256(Buffer.concat(chunks))).toBe(layer.digest);
  });

  it('verify --repair removes a corrupted blob and its records so the next request refetches it', async () => {
    const image = makeImage([50 * KB]);
    const upstream = await upstreamWith({ 'app/x': image });
    const storage = await mkdtemp(join(tmpdir(), 'rc-verify-'));
    cleanup.push(() => rm(storage, { recursive: true, force: true }));
    const config = join(storage, 'config.yaml');
    await writeFile(config, `storage: ${join(storage, 'store')}\nregistries:\n  "${upstream.host}": { url: "${upstream.url}" }\ndefaultRegistry: "${upstream.host}"\n`);
    const cache = await startCache({ [upstream.host]: upstream.url }, {}, join(storage, 'store'));
    await pullAll(cache, upstream, 'app/x', image);
    await cache.stop({ keepStorage: true });
    const layer = image.blobs[1] as { digest: string; bytes: Buffer };
    const file = cache.services.store.pathFor(layer.digest);
    const corrupted = Buffer.from(layer.bytes);
    corrupted[1000] = (corrupted[1000] ?? 0) ^ 1;
    await writeFile(file, corrupted);

    const check = await runCli(['verify', '--config', config]);
    expect(check.code).toBe(1);
    expect(check.stdout).toContain(`digest  ${layer.digest}`);
    const repair = await runCli(['verify', '--repair', '--config', config]);
    expect(repair.code).toBe(0);
    expect(repair.stdout).toContain('1 problems, 1 repaired');
    const again = await runCli(['verify', '--config', config]);
    expect(again.code).toBe(0);

    const restarted = await startCache({ [upstream.host]: upstream.url }, {}, join(storage, 'store'));
    cleanup.push(() => restarted.stop({ keepStorage: true }));
    const before = upstream.count('GET', /\/blobs\//);
    const res = await call(`${restarted.url}/v2/app/x/blobs/${layer.digest}?ns=${upstream.host}`);
    expect(sha256(res.body)).toBe(layer.digest);
    expect(upstream.count('GET', /\/blobs\//)).toBe(before + 1);
  });

  it('on SIGTERM finishes the download in flight, then exits cleanly with the database consistent', async () => {
    const image = makeImage([2_000_000]);
    const upstream = await upstreamWith({ 'app/slow': image });
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'slow', chunkBytes: 100_000, delayMs: 40 } : undefined);
    const dir = await mkdtemp(join(tmpdir(), 'rc-term-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const { child, url } = await spawnServer(dir, upstream, 'NeverVerify');
    cleanup.push(async () => void child.kill('SIGKILL'));
    const layer = image.blobs[1] as { digest: string };
    const download = call(`${url}/v2/app/slow/blobs/${layer.digest}?ns=${upstream.host}`);
    await sleep(200);
    child.kill('SIGTERM');
    const res = await download;
    expect(res.error).toBeUndefined();
    expect(sha256(res.body)).toBe(layer.digest);
    expect(await new Promise((r) => child.on('exit', r))).toBe(0);
    const db = new Database(join(dir, 'store', 'registry-cache.db'), { readonly: true });
    const rows = db.prepare('SELECT digest FROM blobs').pluck().all() as string[];
    db.close();
    for (const d of rows) expect(sha256(await readFile(join(dir, 'store', 'blobs', 'sha256', d.slice(7, 9), d.slice(7))))).toBe(d);
    expect(await readdir(join(dir, 'store', 'tmp'))).toEqual([]);
  });

  it('survives kill -9 at random moments during concurrent pulls: every row has a verified file, nothing partial is visible', async () => {
    const images: Record<string, FakeImage> = {};
    for (let i = 0; i < 4; i++) images[`app/k${i}`] = makeImage([400_000, 900_000]);
    const upstream = await upstreamWith(images);
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'slow', chunkBytes: 32_000, delayMs: 8 } : undefined);
    const dir = await mkdtemp(join(tmpdir(), 'rc-kill-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const iterations = 6;
    const findings: string[] = [];
    for (let i = 0; i < iterations; i++) {
      const { child, url } = await spawnServer(dir, upstream, 'AlwaysVerify');
      const pulls = Object.entries(images).flatMap(([repo, image]) => [
        call(`${url}/v2/${repo}/manifests/v1?ns=${upstream.host}`).catch(() => undefined),
        ...image.blobs.map((b) => call(`${url}/v2/${repo}/blobs/${b.digest}?ns=${upstream.host}`).catch(() => undefined)),
      ]);
      await sleep(20 + Math.floor(Math.random() * 250));
      child.kill('SIGKILL');
      await new Promise((r) => child.on('exit', r));
      await Promise.all(pulls);

      const restarted = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'AlwaysVerify' }, join(dir, 'store'));
      const reconciled = restarted.logs.find((l) => l.includes('store reconciled'));
      const r = reconciled ? (JSON.parse(reconciled) as Record<string, number>) : undefined;
      findings.push(r ? `tmp ${r.removedTempFiles}/rows ${r.droppedRows}/stray ${r.strayFiles}/intents ${r.recoveredIntents}` : 'nothing to fix');
      const { metadata, store, intents } = restarted.services;
      for (const digest of metadata.allBlobDigests()) {
        expect(sha256(await readFile(store.pathFor(digest)))).toBe(digest);
      }
      expect(await readdir(join(dir, 'store', 'tmp'))).toEqual([]);
      // No intents survive a restart, and no content became preloaded by crashing.
      expect(intents.pending()).toBe(0);
      // Preloaded marks by source are not part of the records interface (it answers per name): read the table.
      const inspect = new Database(join(dir, 'store', 'registry-cache.db'), { readonly: true });
      expect(inspect.prepare("SELECT COUNT(*) FROM preloaded WHERE source != 'first-enable'").pluck().get()).toBe(0);
      inspect.close();
      await restarted.stop({ keepStorage: true });
    }
    // Finally everything pulls through completely.
    const { child, url } = await spawnServer(dir, upstream, 'AlwaysVerify');
    cleanup.push(async () => void child.kill('SIGKILL'));
    for (const [repo, image] of Object.entries(images)) {
      for (const b of image.blobs) expect(sha256((await call(`${url}/v2/${repo}/blobs/${b.digest}?ns=${upstream.host}`)).body)).toBe(b.digest);
    }
    console.info(`[kill-9] ${iterations} iterations; reconciliation after each: ${findings.join(', ')}`);
  });
});

async function spawnServer(dir: string, upstream: FakeUpstream, policy: string): Promise<{ child: ChildProcess; url: string }> {
  const config = join(dir, 'config.yaml');
  await writeFile(
    config,
    `listen: 127.0.0.1:0\nstorage: ${join(dir, 'store')}\nimagePullCredentialsVerificationPolicy: ${policy}\nimageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 99\nregistries:\n  "${upstream.host}": { url: "${upstream.url}" }\ndefaultRegistry: "${upstream.host}"\n`,
  );
  const child = spawn(process.execPath, ['dist/cli.js', 'serve', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /"listen":"([^"]+)"/.exec(out);
      if (m) resolve(`http://${m[1]}`);
    });
    child.on('exit', () => reject(new Error(`server exited early: ${out}`)));
  });
  return { child, url };
}

