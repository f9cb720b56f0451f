import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, readdir, readFile, writeFile, mkdtemp, rm } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, describe, expect, it, onTestFailed, vi } from 'vitest';
import { openMetadata } from '../../src/db/open.js';
import { prng } from '../../bench/prng.js';
import { startCache, type TestCache } from '../support/cache-server.js';
import { controlDate } from '../support/clock.js';
import { waitUntil } from '../support/daemon.js';
import { randomBytes, randomInt } from 'node:crypto';
import { FakeUpstream, makeImage, makeImageFrom, sha256, type FakeImage } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';
import { cacheToken } from '../support/registry-auth.js';
import { runCli } from '../support/cli.js';

const KB = 1000;

describe('cache lifecycle', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    vi.useRealTimers();
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
    // Access times a second apart, so the LRU order is the order of the pulls and touches below.
    controlDate();
    const cache = await startCache(
      { [upstream.host]: upstream.url },
      { maxStorageBytes: 100 * KB, imageGCHighThresholdPercent: 85, imageGCLowThresholdPercent: 60, pinnedImages: [`${upstream.host}/app/pause:v1`], gcInterval: '1h' },
    );
    cleanup.push(() => cache.stop());
    for (const repo of ['app/pause', 'app/one', 'app/two']) {
      await pullAll(cache, upstream, repo, images[repo] as FakeImage);
      vi.advanceTimersByTime(1000);
    }
    // ~67 KB stored: under 85 %, nothing goes.
    expect(cache.services.metadata.getManifest((images['app/one'] as FakeImage).manifestDigest)).toBeDefined();
    // Touch app/one so app/two becomes the least recently used unpinned image.
    await call(`${cache.url}/v2/app/one/manifests/${(images['app/one'] as FakeImage).manifestDigest}?ns=${upstream.host}`);
    vi.advanceTimersByTime(1000);
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
    upstream.auth = { kind: 'basic', users: { alice: 'alice-pw', bob: 'bob-pw' } };
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
    await waitUntil('the stored layer is being served', async () => cache.services.blobs.isBusy(layer.digest), { intervalMs: 5 });

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
    // Nothing of the record is left behind: pulled again by bob, the image is recorded for bob alone, not for alice too.
    await pullAll(cache, upstream, 'app/small', small, { authorization: `Bearer ${await cacheToken(cache.url, upstream.host, 'app/small', { username: 'bob', password: 'bob-pw' })}` });
    expect(cache.services.records.get(upstream.host, 'app/small', small.manifestDigest)?.credentialHashes).toHaveLength(1);

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
    await waitUntil('the download is in flight', async () => upstream.count('GET', /\/blobs\//) === 1, { intervalMs: 5 });
    child.kill('SIGTERM');
    const res = await download;
    expect(res.error).toBeUndefined();
    expect(sha256(res.body)).toBe(layer.digest);
    expect(await new Promise((r) => child.on('exit', r))).toBe(0);
    const { index } = openMetadata(join(dir, 'store', 'registry-cache.db'));
    const rows = index.allBlobDigests();
    index.close();
    expect(rows).toContain(layer.digest);
    for (const d of rows) expect(sha256(await readFile(join(dir, 'store', 'blobs', 'sha256', d.slice(7, 9), d.slice(7))))).toBe(d);
    expect(await readdir(join(dir, 'store', 'tmp'))).toEqual([]);
  });

  it('survives kill -9 at random moments during concurrent pulls: every row has a verified file, nothing partial is visible, reconciliation finds what the crash left', async () => {
    // The kill moments come from a seeded generator: a failure prints its seed, and RC_KILL9_SEED=<seed> replays them.
    const seed = process.env.RC_KILL9_SEED ? Number(process.env.RC_KILL9_SEED) : randomInt(2 ** 31);
    onTestFailed(() => console.error(`[kill-9] failed with seed ${seed}; replay with RC_KILL9_SEED=${seed}`));
    const random = prng(seed);
    const images: Record<string, FakeImage> = {};
    for (let i = 0; i < 4; i++) images[`app/k${i}`] = makeImage([400_000, 900_000]);
    const upstream = await upstreamWith(images);
    upstream.fault = (r) => (r.path.includes('/blobs/') ? { kind: 'slow', chunkBytes: 32_000, delayMs: 8 } : undefined);
    const dir = await mkdtemp(join(tmpdir(), 'rc-kill-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const store = join(dir, 'store');
    const iterations = 6;
    const findings: Reconciliation[] = [];
    for (let i = 0; i < iterations; i++) {
      const { child, url } = await spawnServer(dir, upstream, 'AlwaysVerify');
      const blobGetsBefore = upstream.count('GET', /\/blobs\//);
      const pulls = Object.entries(images).flatMap(([repo, image]) => [
        call(`${url}/v2/${repo}/manifests/v1?ns=${upstream.host}`).catch(() => undefined),
        ...image.blobs.map((b) => call(`${url}/v2/${repo}/blobs/${b.digest}?ns=${upstream.host}`).catch(() => undefined)),
      ]);
      // A random moment once downloads are under way (each layer takes ~100-250 ms to arrive).
      await waitUntil('downloads started', async () => upstream.count('GET', /\/blobs\//) > blobGetsBefore, { intervalMs: 2 });
      await delay(Math.floor(random() * 250));
      child.kill('SIGKILL');
      await new Promise((r) => child.on('exit', r));
      await Promise.all(pulls);

      // What the crash left, measured before anything recovers it: a row always has its file.
      const left = await crashLeftovers(dir);
      expect(left.rowsWithoutFile, `seed ${seed}, kill ${i}: rows without a file`).toEqual([]);

      const restarted = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'AlwaysVerify' }, store);
      const found = reconciliationOf(restarted.logs);
      findings.push(found);
      expect(found, `seed ${seed}, kill ${i}: what reconciliation reported`).toEqual({
        removedTempFiles: left.tempFiles,
        droppedRows: 0,
        strayFiles: left.filesWithoutRow.length,
        recoveredIntents: left.intents,
        usageDriftBytes: 0,
      });
      const { metadata, records, intents, store: blobs } = restarted.services;
      for (const digest of metadata.allBlobDigests()) {
        expect(sha256(await readFile(blobs.pathFor(digest)))).toBe(digest);
      }
      for (const digest of left.filesWithoutRow) expect(await blobs.size(digest)).toBeUndefined();
      expect(await readdir(join(store, 'tmp'))).toEqual([]);
      // No intents survive a restart, and no content became preloaded by crashing.
      expect(intents.pending()).toBe(0);
      for (const [repo, image] of Object.entries(images)) {
        for (const digest of [image.manifestDigest, ...image.blobs.map((b) => b.digest)]) expect(records.isPreloaded(upstream.host, repo, digest)).toBe(false);
      }
      await restarted.stop({ keepStorage: true });
    }
    // The kills landed mid-transfer: something was left to clean up (the test would prove nothing otherwise).
    expect(findings.some((f) => f.removedTempFiles + f.strayFiles + f.recoveredIntents > 0), `seed ${seed}: ${JSON.stringify(findings)}`).toBe(true);
    // Finally everything pulls through completely.
    const { child, url } = await spawnServer(dir, upstream, 'AlwaysVerify');
    cleanup.push(async () => void child.kill('SIGKILL'));
    for (const [repo, image] of Object.entries(images)) {
      for (const b of image.blobs) expect(sha256((await call(`${url}/v2/${repo}/blobs/${b.digest}?ns=${upstream.host}`)).body)).toBe(b.digest);
    }
    console.info(
      `[kill-9] seed ${seed}, ${iterations} kills; reconciliation after each: ` +
        findings.map((r) => `tmp ${r.removedTempFiles}/rows ${r.droppedRows}/stray ${r.strayFiles}/intents ${r.recoveredIntents}`).join(', '),
    );
  });
});

/** What start-up reconciliation reports (all zero when it logs nothing). */
interface Reconciliation {
  removedTempFiles: number;
  droppedRows: number;
  strayFiles: number;
  recoveredIntents: number;
  usageDriftBytes: number;
}

function reconciliationOf(logs: string[]): Reconciliation {
  const line = logs.find((l) => l.includes('store reconciled'));
  const r = line ? (JSON.parse(line) as Partial<Reconciliation>) : {};
  return {
    removedTempFiles: r.removedTempFiles ?? 0,
    droppedRows: r.droppedRows ?? 0,
    strayFiles: r.strayFiles ?? 0,
    recoveredIntents: r.recoveredIntents ?? 0,
    usageDriftBytes: r.usageDriftBytes ?? 0,
  };
}

/**
 * The state a killed server left in `dir/store`, read from a copy of its database (so nothing is recovered in
 * place): temp files, rows without a file, files without a row, and pull intents still open.
 */
async function crashLeftovers(dir: string): Promise<{ tempFiles: number; rowsWithoutFile: string[]; filesWithoutRow: string[]; intents: number }> {
  const store = join(dir, 'store');
  const copy = await mkdtemp(join(dir, 'db-copy-'));
  for (const suffix of ['', '-wal']) {
    await copyFile(join(store, `registry-cache.db${suffix}`), join(copy, `registry-cache.db${suffix}`)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
  const db = openMetadata(join(copy, 'registry-cache.db'));
  const rows = new Set(db.index.allBlobDigests());
  const intents = db.intents.pending();
  db.index.close();
  await rm(copy, { recursive: true, force: true });
  const files = new Set<string>();
  const blobsDir = join(store, 'blobs');
  for (const algorithm of await readdir(blobsDir)) {
    for (const prefix of await readdir(join(blobsDir, algorithm))) {
      for (const name of await readdir(join(blobsDir, algorithm, prefix))) files.add(`${algorithm}:${name}`);
    }
  }
  return {
    tempFiles: (await readdir(join(store, 'tmp'))).length,
    rowsWithoutFile: [...rows].filter((d) => !files.has(d)),
    filesWithoutRow: [...files].filter((d) => !rows.has(d)),
    intents,
  };
}

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
