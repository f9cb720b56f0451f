import { createHash, randomBytes } from 'node:crypto';
import { copyFile, mkdir, readdir, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import { startDaemon, tail, waitUntil, type Daemon } from '../../test/support/daemon.js';
import { sample } from '../../test/support/exposition.js';
import { findFreePort } from '../../test/support/free-port.js';
import { runCommand } from '../../test/support/command.js';
import { makeTempDir, removeTempDir } from '../../test/support/temp-dir.js';
import { MANIFEST_ACCEPT, forEachLimited, pullImage, runLoad, type LoadRequest } from '../clients.js';
import { BUSY_LOAD } from '../report.js';
import { RowSet, type SystemName } from '../results.js';
import { processCpuSeconds, readStatusBytes, readStatusField } from '../rss.js';
import type { StandaloneEnv, ScenarioOutput } from '../scenario.js';
import { secondsSince, summarize } from '../stats.js';
import { loadStoreModules, type StoreModules } from '../store-modules.js';
import { currentCacheCli, SERVER_NODE_FLAGS } from '../systems.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar';
/** Blobs per image besides its manifest: a config and 9 layers (11 rows with the manifest). */
const BLOBS_PER_IMAGE = 10;
/** Rows in `blobs` per image: its blobs and its manifest. */
const ROWS_PER_IMAGE = BLOBS_PER_IMAGE + 1;

/** The store sizes measured, in rows of `blobs` (manifests included), and how many images each fills over HTTP. */
const STEPS: Array<{ column: SystemName; blobs: number; fillImages: number }> = [
  { column: '1k blobs', blobs: 1_000, fillImages: 40 },
  { column: '10k blobs', blobs: 10_000, fillImages: 200 },
  { column: '100k blobs', blobs: 100_000, fillImages: 200 },
];
/** Image pulls at once while filling, as in the issue's measurement. */
const FILL_CLIENTS = 24;
const HIT_REQUESTS = 3_000;
const HIT_CONCURRENCY = 8;
/** Sets of warm hits per size (after the fill, after a clean restart, after a crash); the median is reported. */
const HIT_SETS = 3;
/** How long idle RSS waits for the server's idle collection after the first set of hits (none runs below 16 MiB of growth). */
const IDLE_WAIT_MS = 5_000;
/** `gc` runs per size, each on an identical copy of the store but the last; the median is reported. */
const GC_RUNS = 3;

/** An image's parts, with its manifest's bytes and digest. */
interface SyntheticImage {
  repo: string;
  manifest: Buffer;
  manifestDigest: string;
  blobs: Array<{ digest: string; bytes: Buffer; mediaType: string }>;
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** An image of one config and 9 layers of 1–4 KiB random bytes. */
function makeImage(repo: string): SyntheticImage {
  const blobs = Array.from({ length: BLOBS_PER_IMAGE }, (_, i) => {
    const bytes = randomBytes(1024 + Math.floor(Math.random() * 3 * 1024));
    return { digest: sha256(bytes), bytes, mediaType: i === 0 ? OCI_CONFIG : OCI_LAYER };
  });
  const [config, ...layers] = blobs;
  if (!config) throw new Error('no config');
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, digest: config.digest, size: config.bytes.length },
      layers: layers.map((l) => ({ mediaType: OCI_LAYER, digest: l.digest, size: l.bytes.length })),
    }),
  );
  return { repo, manifest, manifestDigest: sha256(manifest), blobs };
}

/** A synthetic upstream registry serving images made on first request (by name); answers HEAD and GET. */
async function startSyntheticUpstream(): Promise<{ url: string; host: string; made: Map<string, SyntheticImage>; close(): Promise<void> }> {
  const images = new Map<string, SyntheticImage>();
  const blobs = new Map<string, Buffer>();
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const send = (status: number, body: Buffer, headers: Record<string, string> = {}): void => {
      res.writeHead(status, { 'content-length': String(body.length), ...headers });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (path === '/v2/') return send(200, Buffer.from('{}'), { 'content-type': 'application/json' });
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(path);
    if (!m) return send(404, Buffer.from('{"errors":[{"code":"NAME_UNKNOWN","message":"no such route"}]}'));
    const [, repo = '', kind, ref = ''] = m;
    if (kind === 'manifests') {
      let img = images.get(repo);
      if (!img) {
        img = makeImage(repo);
        images.set(repo, img);
        for (const b of img.blobs) blobs.set(b.digest, b.bytes);
      }
      if (ref !== 'latest' && ref !== img.manifestDigest) return send(404, Buffer.from('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}'));
      return send(200, img.manifest, { 'content-type': OCI_MANIFEST, 'docker-content-digest': img.manifestDigest });
    }
    const blob = blobs.get(ref);
    if (!blob) return send(404, Buffer.from('{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}'));
    return send(200, blob, { 'content-type': 'application/octet-stream', 'docker-content-digest': ref });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    made: images,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * Adds images to a stopped server's store through the build's own Metadata, PullRecords and BlobStore modules:
 * files written where BlobStore puts them (without the per-file fsync of a real fill, for speed), then the rows a
 * pull through the server writes (blob rows, manifest with references, repository links, tag, a pull record per
 * digest), 200 images per transaction.
 */
async function populate(mods: StoreModules, storage: string, registry: string, firstIndex: number, count: number): Promise<void> {
  const store = new mods.BlobStore(storage);
  await store.ensureDirectories();
  const db = mods.openDatabase(join(storage, 'registry-cache.db'));
  const metadata = new mods.Metadata(db);
  const records = new mods.PullRecords(db);
  const made = new Set<string>();
  try {
    for (let start = 0; start < count; start += 200) {
      const batch = Array.from({ length: Math.min(200, count - start) }, (_, i) => makeImage(`sg/img-${firstIndex + start + i}`));
      await forEachLimited(
        batch.flatMap((img) => [...img.blobs.map((b) => ({ digest: b.digest, bytes: b.bytes })), { digest: img.manifestDigest, bytes: img.manifest }]),
        16,
        async (f) => {
          const path = store.pathFor(f.digest);
          const dir = dirname(path);
          if (!made.has(dir)) {
            await mkdir(dir, { recursive: true });
            made.add(dir);
          }
          await writeFile(path, f.bytes);
        },
      );
      db.transaction(() => {
        for (const img of batch) {
          for (const b of img.blobs) {
            metadata.insertBlob(b.digest, b.bytes.length, null);
            metadata.linkRepository(registry, img.repo, b.digest);
          }
          metadata.insertManifest(
            { digest: img.manifestDigest, size: img.manifest.length, mediaType: OCI_MANIFEST },
            img.blobs.map((b) => ({ child: b.digest, kind: 'blob' as const })),
            { registry, repository: img.repo },
          );
          metadata.putTag(registry, img.repo, 'latest', img.manifestDigest);
          for (const d of [img.manifestDigest, ...img.blobs.map((b) => b.digest)]) records.recordSuccess(registry, img.repo, d, { kind: 'nodePodsAccessible' });
        }
      })();
    }
  } finally {
    metadata.close();
  }
}

/** Rows, bytes and stored manifests (with a repository each) of a stopped server's store. */
function storeFacts(mods: StoreModules, storage: string): { rows: number; bytes: number; manifests: Array<{ repo: string; digest: string }> } {
  const db = mods.openDatabase(join(storage, 'registry-cache.db'));
  try {
    const { rows, bytes } = db.prepare('SELECT count(*) AS rows, COALESCE(SUM(size), 0) AS bytes FROM blobs').get() as { rows: number; bytes: number };
    const manifests = db
      .prepare('SELECT d.repository AS repo, b.digest AS digest FROM manifests m JOIN blobs b ON b.id = m.blob JOIN repository_digests d ON d.digest = b.digest')
      .all() as Array<{ repo: string; digest: string }>;
    return { rows, bytes, manifests };
  } finally {
    db.close();
  }
}

/** One registry-cache process on a fixed port and storage; start() reports spawn → first answer on /v2/. */
class CacheProcess {
  private daemon: Daemon | undefined;
  private starts = 0;

  constructor(
    private readonly dir: string,
    readonly configFile: string,
    readonly port: number,
    readonly metricsPort: number,
  ) {}

  /** The server's count of idle memory collections so far (its metrics listener). */
  async idleCollections(): Promise<number> {
    const res = await fetch(`http://127.0.0.1:${this.metricsPort}/metrics`, { signal: AbortSignal.timeout(5_000) });
    const count = sample(await res.text(), 'registry_cache_idle_memory_collections_total');
    if (count === undefined) throw new Error('registry-cache /metrics has no registry_cache_idle_memory_collections_total');
    return count;
  }

  /** Waits (polling every 100 ms, up to `timeoutMs`) until the server ran an idle collection after `count`. */
  async idleCollectionAfter(count: number, timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if ((await this.idleCollections()) > count) return true;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return false;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get pid(): number {
    if (!this.daemon) throw new Error('registry-cache is not running');
    return this.daemon.pid;
  }

  /** CPU seconds the server used until its first answer, for the last start(). */
  startCpuSeconds = Number.NaN;

  /** Starts it and resolves with the seconds until GET /v2/ first answered (polled every 5 ms). */
  async start(): Promise<number> {
    const t0 = process.hrtime.bigint();
    this.daemon = await startDaemon(process.execPath, [...SERVER_NODE_FLAGS, currentCacheCli(), 'serve', '--config', this.configFile], join(this.dir, `serve-${++this.starts}.log`));
    await waitUntil(
      'registry-cache',
      async () => {
        const res = await fetch(`${this.url}/v2/`, { signal: AbortSignal.timeout(1_000) });
        await res.body?.cancel();
        return res.status === 200;
      },
      { daemon: this.daemon, timeoutMs: 120_000, intervalMs: 5 },
    );
    const seconds = secondsSince(t0);
    this.startCpuSeconds = processCpuSeconds(this.daemon.pid);
    return seconds;
  }

  /** SIGTERM: the clean shutdown a rollout does. */
  async stop(): Promise<void> {
    await this.daemon?.stop(60_000);
    this.daemon = undefined;
  }

  /** SIGKILL: a crash (OOM kill, node lost). */
  async crash(): Promise<void> {
    const d = this.daemon;
    if (!d) return;
    d.child.kill('SIGKILL');
    await d.stop(1_000);
    this.daemon = undefined;
  }

  async log(): Promise<string> {
    return this.daemon ? tail(await this.daemon.readLog(), 20) : '';
  }
}

function rssBytes(pid: number): number {
  return readStatusField(pid, 'VmRSS') ?? Number.NaN;
}

/** VmRSS and its parts (anonymous memory: heap and malloc; file pages: code and mapped files; shared memory), one read. */
function rssSample(pid: number): { bytes: number; parts: string } {
  const parts = ['RssAnon', 'RssFile', 'RssShmem'] as const;
  const status = readStatusBytes(pid, ['VmRSS', ...parts]);
  return { bytes: status.VmRSS ?? Number.NaN, parts: parts.map((f) => `${f} ${((status[f] ?? Number.NaN) / 2 ** 20).toFixed(1)} MiB`).join(', ') };
}

/**
 * Runs a CLI command with the server stopped: wall seconds and, through GNU time, CPU seconds (user + system),
 * which a machine shared with other work inflates far less than wall time.
 */
async function timedCli(args: string[], configFile: string): Promise<{ seconds: number; cpuSeconds: number; stdout: string }> {
  const t0 = process.hrtime.bigint();
  const r = await runCommand('/usr/bin/time', ['-f', '__cpu %U %S', process.execPath, currentCacheCli(), ...args, '--config', configFile], { timeoutMs: 900_000 });
  const seconds = secondsSince(t0);
  const cpu = /__cpu ([\d.]+) ([\d.]+)/.exec(r.stderr);
  return { seconds, cpuSeconds: cpu ? Number(cpu[1]) + Number(cpu[2]) : Number.NaN, stdout: r.stdout.toString('utf8') };
}

/**
 * A copy of a stopped server's store for one more `gc` run: its files hard-linked (gc only unlinks them), everything
 * else at the top level (database, its WAL, the node secret, the clean-shutdown mark) copied.
 */
async function copyStore(storage: string, copy: string): Promise<string> {
  await mkdir(copy, { recursive: true });
  for (const entry of await readdir(storage, { withFileTypes: true })) {
    if (entry.isDirectory()) await runCommand('cp', ['-al', join(storage, entry.name), join(copy, entry.name)]);
    else await copyFile(join(storage, entry.name), join(copy, entry.name));
  }
  return copy;
}

/**
 * Cost as the store grows (issue 17): stores of 1k, 10k and 100k blob rows (images of a manifest, a config and 9
 * layers of 1–4 KiB); at each size the fill rate of new images through the server, warm manifest hits, idle RSS,
 * start-up after a clean shutdown and after SIGKILL, and the maintenance commands with the server stopped.
 */
export async function storeGrowth(env: StandaloneEnv): Promise<ScenarioOutput> {
  const { log, teardown } = env;
  const mods = await loadStoreModules();
  const dir = await makeTempDir('rc-bench-store-growth-');
  const removeDir = teardown.add(`store-growth temp dir ${dir}`, () => removeTempDir(dir));
  const upstream = await startSyntheticUpstream();
  const removeUpstream = teardown.add('store-growth synthetic upstream', () => upstream.close());
  const storage = join(dir, 'storage');
  await mkdir(storage, { recursive: true });
  const port = await findFreePort();
  let metricsPort = await findFreePort();
  while (metricsPort === port) metricsPort = await findFreePort();
  const baseConfig = {
    listen: `127.0.0.1:${port}`,
    metricsListen: `127.0.0.1:${metricsPort}`,
    storage,
    registries: { [upstream.host]: { url: upstream.url } },
    defaultRegistry: upstream.host,
    imagePullCredentialsVerificationPolicy: 'NeverVerify',
    logLevel: 'warn',
    tagTtl: '0s',
    // The machine's disk must not decide what is evicted while the store grows.
    imageGCHighThresholdPercent: 100,
    imageGCLowThresholdPercent: 99,
  };
  const configFile = join(dir, 'config.yml');
  await writeFile(configFile, JSON.stringify(baseConfig, null, 2));
  const cache = new CacheProcess(dir, configFile, port, metricsPort);
  const removeCache = teardown.add('store-growth registry-cache', () => cache.crash());
  const rows = new RowSet();
  const notes: string[] = [];
  const loads: Array<{ column: SystemName; load: number }> = [];
  let populatedImages = 0;
  let fillIndex = 0;
  try {
    const emptyStart = await cache.start();
    notes.push(`Start-up on an empty store (the floor: Node and module loading): ${(emptyStart * 1000).toFixed(0)} ms, ${cache.startCpuSeconds.toFixed(2)} CPU s.`);
    const noop = await timedCli(['records', '--image', 'none.invalid/none'], configFile);
    notes.push(`A CLI command on an empty store (the floor of \`records\`, \`verify\`, \`gc\`): ${noop.seconds.toFixed(2)} s, ${noop.cpuSeconds.toFixed(2)} CPU s.`);
    await cache.stop();
    for (const step of STEPS) {
      const col = step.column;
      const before = storeFacts(mods, storage);
      const toAdd = Math.max(0, Math.ceil((step.blobs - before.rows) / ROWS_PER_IMAGE) - step.fillImages);
      let t0 = process.hrtime.bigint();
      await populate(mods, storage, upstream.host, populatedImages, toAdd);
      populatedImages += toAdd;
      log(`  ${col}: populated ${toAdd} images directly in ${secondsSince(t0).toFixed(1)} s`);
      // Populating (and the previous size's measurements) raised the load the measurements below would run in.
      await env.settle?.();
      loads.push({ column: col, load: loadavg()[0] ?? Number.NaN });
      await cache.start();

      // Fill: new images through the server, FILL_CLIENTS pulls at once; the rate of the last half is "at the end".
      const names = Array.from({ length: step.fillImages }, () => `sg/fill-${fillIndex++}`);
      const done: number[] = [];
      t0 = process.hrtime.bigint();
      await forEachLimited(names, FILL_CLIENTS, async (repo) => {
        await pullImage(cache.url, repo, 'latest', { concurrency: 4 });
        done.push(secondsSince(t0));
      });
      const half = Math.floor(done.length / 2);
      const lastHalfRate = (done.length - half) / ((done[done.length - 1] ?? 0) - (done[half - 1] ?? 0));
      rows.add('sg-fill-rate', { label: 'fill rate, last half of the fill', unit: 'images/s', better: 'higher', digits: 1 }, col, lastHalfRate);
      for (const n of names) upstream.made.delete(n);

      // Warm manifest hits by digest, over every stored image: one set after the fill, one after each restart below
      // (each in a process that has served none of them yet), reported as the median set.
      const facts = storeFacts(mods, storage);
      const hitSets: Array<{ p50Ms: number; p99Ms: number }> = [];
      const measureHits = async (): Promise<void> => {
        const plan: LoadRequest[] = Array.from({ length: HIT_REQUESTS }, () => {
          const m = facts.manifests[Math.floor(Math.random() * facts.manifests.length)] as { repo: string; digest: string };
          return { kind: 'manifest', path: `/v2/${m.repo}/manifests/${m.digest}`, accept: MANIFEST_ACCEPT, digest: m.digest };
        });
        await runLoad(cache.url, plan.slice(0, 300), HIT_CONCURRENCY);
        const hits = await runLoad(cache.url, plan, HIT_CONCURRENCY);
        if (hits.errors > 0) notes.push(`${col}: ${hits.errors} manifest hits failed: ${hits.errorSamples.join('; ')}`);
        hitSets.push(hits);
      };
      await measureHits();
      const collectionsBefore = await cache.idleCollections();
      // Idle means after the server's own idle collection (1 s of quiet, checked every 0.5 s): a fixed 2 s wait raced
      // it on a busy machine (one full run read 203 MB where the same build's runs alone read 146–149).
      const rssAtTwo = await new Promise<number>((resolve) => setTimeout(() => resolve(rssBytes(cache.pid)), 2_000));
      const collected = await cache.idleCollectionAfter(collectionsBefore, IDLE_WAIT_MS);
      const idleRss = rssSample(cache.pid);
      rows.add('sg-rss', { label: 'idle RSS after fill and hits', unit: 'MB', better: 'lower', digits: 0 }, col, idleRss.bytes / 1e6);
      notes.push(
        `${col}: idle RSS ${(idleRss.bytes / 1e6).toFixed(0)} MB (${idleRss.parts}), ${collected ? 'after the server\'s idle collection' : `no idle collection within ${IDLE_WAIT_MS / 1000} s`}; ${(rssAtTwo / 1e6).toFixed(0)} MB 2 s after the hits.`,
      );

      await cache.stop();
      rows.add('sg-start-clean', { label: 'start-up after a clean shutdown', unit: 's', better: 'lower', digits: 2 }, col, await cache.start());
      rows.add('sg-start-clean-cpu', { label: 'start-up after a clean shutdown, CPU', unit: 'CPU s', better: 'lower', digits: 2 }, col, cache.startCpuSeconds);
      await measureHits();
      await cache.crash();
      rows.add('sg-start-crash', { label: 'start-up after a crash (SIGKILL)', unit: 's', better: 'lower', digits: 2 }, col, await cache.start());
      rows.add('sg-start-crash-cpu', { label: 'start-up after a crash (SIGKILL), CPU', unit: 'CPU s', better: 'lower', digits: 2 }, col, cache.startCpuSeconds);
      await measureHits();
      await cache.stop();
      const p99s = hitSets.map((h) => h.p99Ms);
      rows.add('sg-hit-p99', { label: `warm manifest hit p99, median of ${HIT_SETS} sets`, unit: 'ms', better: 'lower', digits: 2 }, col, summarize(p99s).median);
      rows.add('sg-hit-p50', { label: `warm manifest hit p50, median of ${HIT_SETS} sets`, unit: 'ms', better: 'lower', digits: 2 }, col, summarize(hitSets.map((h) => h.p50Ms)).median);
      notes.push(`${col}: warm manifest hit p99 of each set ${p99s.map((v) => v.toFixed(2)).join(' / ')} ms (after the fill / after a clean restart / after a crash).`);

      rows.add('sg-rows', { label: 'rows in blobs (manifests included) when measured', unit: 'count', better: 'none', digits: 0 }, col, facts.rows);
      const records = await timedCli(['records'], configFile);
      rows.add('sg-records', { label: '`records`, server stopped', unit: 's', better: 'lower', digits: 2 }, col, records.seconds);
      rows.add('sg-records-cpu', { label: '`records`, CPU', unit: 'CPU s', better: 'lower', digits: 2 }, col, records.cpuSeconds);
      rows.add('sg-records-lines', { label: '`records` lines printed', unit: 'count', better: 'none', digits: 0 }, col, records.stdout.split('\n').length - 2);
      const verify = await timedCli(['verify'], configFile);
      const verified = /checked (\d+) files, (\d+) bytes; (\d+) problems/.exec(verify.stdout);
      if (!verified || verified[3] !== '0') notes.push(`${col}: verify printed ${verify.stdout.slice(-200)}`);
      rows.add('sg-verify', { label: '`verify`, server stopped', unit: 's', better: 'lower', digits: 2 }, col, verify.seconds);
      rows.add('sg-verify-cpu', { label: '`verify`, CPU', unit: 'CPU s', better: 'lower', digits: 2 }, col, verify.cpuSeconds);
      rows.add('sg-verify-mbps', { label: '`verify` throughput', unit: 'MB/s', better: 'higher', digits: 1 }, col, Number(verified?.[2] ?? Number.NaN) / verify.seconds / 1e6);

      // gc with a bound of exactly the stored bytes, high 100 %, low 90 %: frees ~10 %. Run on identical copies of
      // the store (files hard-linked, database copied) and then on the store itself; the median run is reported.
      const stored = storeFacts(mods, storage).bytes;
      const gcRuns: Array<{ seconds: number; cpuSeconds: number; pass: number; images: number }> = [];
      for (let run = 0; run < GC_RUNS; run++) {
        const target = run < GC_RUNS - 1 ? await copyStore(storage, join(dir, `gc-copy-${run}`)) : storage;
        const gcConfig = join(dir, `gc-${run}.yml`);
        await writeFile(gcConfig, JSON.stringify({ ...baseConfig, storage: target, maxStorageBytes: stored, imageGCHighThresholdPercent: 100, imageGCLowThresholdPercent: 90 }, null, 2));
        const gc = await timedCli(['gc'], gcConfig);
        const freed = /evicted (\d+) images, (\d+) bytes/.exec(gc.stdout);
        // What gc prints as its own pass (a build from before it did prints nothing: NaN).
        const pass = /; pass ([\d.]+) s$/m.exec(gc.stdout);
        gcRuns.push({ seconds: gc.seconds, cpuSeconds: gc.cpuSeconds, pass: Number(pass?.[1] ?? Number.NaN), images: Number(freed?.[1] ?? Number.NaN) });
        if (target !== storage) await removeTempDir(target);
      }
      const gc = gcRuns.slice().sort((a, b) => a.seconds - b.seconds)[Math.floor(GC_RUNS / 2)] ?? { seconds: Number.NaN, cpuSeconds: Number.NaN, pass: Number.NaN, images: Number.NaN };
      rows.add('sg-gc', { label: `\`gc\` freeing ~10 %, server stopped, median of ${GC_RUNS}`, unit: 's', better: 'lower', digits: 2 }, col, gc.seconds);
      rows.add('sg-gc-pass', { label: '`gc`: its eviction pass alone (list, row deletes, file removals), median run', unit: 's', better: 'lower', digits: 2 }, col, gc.pass);
      rows.add('sg-gc-cpu', { label: '`gc` freeing ~10 %, CPU, median run', unit: 'CPU s', better: 'lower', digits: 2 }, col, gc.cpuSeconds);
      rows.add('sg-gc-images', { label: '`gc` images evicted', unit: 'count', better: 'none', digits: 0 }, col, gc.images);
      notes.push(`${col}: \`gc\` runs ${gcRuns.map((r) => `${r.seconds.toFixed(2)} s (pass ${r.pass.toFixed(2)} s, ${r.images} images)`).join(' / ')}.`);
      log(
        `  ${col}: ${facts.rows} rows; fill ${lastHalfRate.toFixed(1)} images/s; hit p99 ${summarize(p99s).median.toFixed(2)} ms; records ${records.seconds.toFixed(2)} s; verify ${verify.seconds.toFixed(2)} s; gc ${gc.seconds.toFixed(2)} s, pass ${gc.pass.toFixed(2)} s (${gc.images} images)`,
      );
    }
  } catch (err) {
    throw new Error(`${err instanceof Error ? err.message : String(err)}\n${await cache.log()}`);
  } finally {
    removeCache();
    await cache.crash();
    removeUpstream();
    await upstream.close();
    removeDir();
    await removeTempDir(dir);
  }
  const busy = loads.filter((l) => l.load >= BUSY_LOAD);
  notes.push(`1-minute load average before each size: ${loads.map((l) => `${l.column}: ${l.load.toFixed(2)}`).join(', ')}.`);
  if (busy.length > 0) {
    notes.push(
      `**Warning: the machine was busy** before ${busy.map((l) => l.column).join(', ')} (load average ≥ ${BUSY_LOAD}): wall times and latencies of those sizes are inflated; the CPU rows are not.`,
    );
  }
  return {
    method:
      `One registry-cache process (NeverVerify, tagTtl 0s, no maxStorageBytes, GC thresholds 100/99 %) in front of an in-process synthetic upstream serving images of a manifest, a config and 9 layers of 1–4 KiB random bytes. ` +
      `For each size the store is first brought near the target by writing images directly with the build's own Metadata, PullRecords and BlobStore modules (server stopped; files without fsync; a nodePodsAccessible pull record per digest), because filling 100k blobs through HTTP takes longer than the run may (a full run then waits up to 150 s for the 1-minute load average to fall below 1.5, as before every scenario); ` +
      `then the server is started and the last ${STEPS.map((s) => s.fillImages).join('/')} images are pulled through it, ${FILL_CLIENTS} pulls at once (fill rate = images/s over the last half of them). ` +
      'CPU rows: user + system seconds of the server until its first answer (/proc/PID/stat) or of the CLI process (GNU time); on a machine shared with other work they move far less than wall time. ' +
      `Warm hits: ${HIT_REQUESTS} GETs of random stored manifests by digest, ${HIT_CONCURRENCY} at a time (after 300 to warm up), in ${HIT_SETS} sets (after the fill, after the clean restart, after the crash restart: each in a process that had served none of them); p50 and p99 are the median set's. Idle RSS: VmRSS after the first set, once the server's idle collection ran (its metrics counter, waited for up to ${IDLE_WAIT_MS / 1000} s; the value 2 s after the set is in the notes). ` +
      `Start-up: spawn until GET /v2/ first answers, after SIGTERM and after SIGKILL. \`records\`, \`verify\` and \`gc\` (maxStorageBytes = stored bytes, thresholds 100/90 %: frees ~10 %) run as CLI processes with the server stopped, Node start-up included; \`gc\` runs ${GC_RUNS} times, on identical copies of the store (files hard-linked, database copied) and last on the store itself, and the median run is reported; it also prints the time of its eviction pass alone (the evictor inside the process: the list, the row deletes and the file removals, without Node start-up, module loading and opening the store).`,
    columns: STEPS.map((s) => s.column),
    ratios: [
      { label: '100k / 10k', numerator: '100k blobs', denominator: '10k blobs' },
      { label: '100k / 1k', numerator: '100k blobs', denominator: '1k blobs' },
    ],
    rows: rows.rows,
    notes,
  };
}
