/**
 * Probe (not part of `npm run bench`): what one Node thread can relay of a cold blob on this machine, and whether a
 * `worker_threads` worker adds to it. nginx (sendfile) serves a 1 GiB file; a child Node process GETs it with undici
 * and answers one curl with it, in five ways:
 *
 * - `relay`: bytes only, no hashing, no file: the floor of any design that receives and sends on one thread;
 * - `hash`: plus sha256 on the same thread;
 * - `hash+write`: plus positional `writev` batches to a temp file (the thread pool), as the cache's fill does;
 * - `hash-in-worker`: the chunks copied into buffers of their own and transferred to a worker that hashes them;
 * - `download-in-worker`: a worker GETs, hashes and writes, and transfers each chunk to the main thread, which only
 *   sends (16 chunks in flight).
 *
 * Prints throughput and CPU seconds per GiB of the main thread and of the whole process, median of the rounds.
 * Usage: `tsc -p bench/tsconfig.json && node bench/out/bench/probes/cold-relay.js [rounds]` (needs nginx and curl).
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { on, once } from 'node:events';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { curlDownload } from '../clients.js';
import { processCpuSeconds } from '../rss.js';
import { makeTempDir } from '../../test/support/temp-dir.js';
import { summarize } from '../stats.js';
import { startNginx } from '../systems.js';
import { Teardown } from '../teardown.js';

const BLOB_BYTES = 1024 * 1024 * 1024;
const MODES = ['relay', 'hash', 'hash+write', 'hash-in-worker', 'download-in-worker'] as const;
type Mode = (typeof MODES)[number];
/** Chunks the download worker may have sent that the main thread has not yet written to its client. */
const WORKER_CREDITS = 16;
/** Unwritten bytes the file writer holds before the download waits (the cache's HashingWriter: 1 MiB). */
const PENDING_LIMIT = 1024 * 1024;

function processCpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** Writes queued chunks to `file` in positional writev batches, one at a time, as the cache's HashingWriter does. */
class BatchWriter {
  private queue: Buffer[] = [];
  private pending = 0;
  private offset = 0;
  private flushing: Promise<void> | undefined;
  private resume: (() => void) | undefined;

  constructor(private readonly file: Awaited<ReturnType<typeof open>>) {}

  /** Queues a chunk; resolves at once unless PENDING_LIMIT bytes are not yet written. */
  async push(chunk: Buffer): Promise<void> {
    this.queue.push(chunk);
    this.pending += chunk.length;
    this.flushing ??= this.flush();
    if (this.pending > PENDING_LIMIT) await new Promise<void>((r) => (this.resume = r));
  }

  async end(): Promise<void> {
    while (this.flushing) await this.flushing;
    await this.file.close();
  }

  private async flush(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0);
      const { bytesWritten } = await this.file.writev(batch, this.offset);
      this.offset += bytesWritten;
      this.pending -= bytesWritten;
      if (this.resume && this.pending <= PENDING_LIMIT) {
        const resume = this.resume;
        this.resume = undefined;
        resume();
      }
    }
    this.flushing = undefined;
  }
}

/** A copy of `chunk` in an ArrayBuffer of its own, which can be transferred (undici's chunks share theirs). */
function ownCopy(chunk: Buffer): ArrayBuffer {
  // allocUnsafeSlow: an ArrayBuffer of its own, not zero-filled, never a slice of the shared pool.
  const copy = Buffer.allocUnsafeSlow(chunk.length);
  chunk.copy(copy);
  return copy.buffer as ArrayBuffer;
}

/** The worker's side: hash what the main thread transfers, or download, hash, write and transfer. */
async function runWorker(data: { role: 'hash' } | { role: 'download'; url: string; file: string }): Promise<void> {
  const port = parentPort;
  if (!port) return;
  const hash = createHash('sha256');
  if (data.role === 'hash') {
    port.on('message', (m: ArrayBuffer | 'end') => {
      if (m === 'end') port.postMessage(hash.digest('hex'));
      else hash.update(new Uint8Array(m));
    });
    return;
  }
  let credits = WORKER_CREDITS;
  let wake: (() => void) | undefined;
  port.on('message', () => {
    credits++;
    wake?.();
    wake = undefined;
  });
  const writer = new BatchWriter(await open(data.file, 'w'));
  const { body } = await request(data.url);
  for await (const chunk of body as AsyncIterable<Buffer>) {
    hash.update(chunk);
    // The writer keeps undici's chunk until it is written; the main thread gets a copy whose buffer can move.
    await writer.push(chunk);
    while (credits === 0) await new Promise<void>((r) => (wake = r));
    credits--;
    const copy = ownCopy(chunk);
    port.postMessage(copy, [copy]);
  }
  await writer.end();
  port.postMessage({ digest: hash.digest('hex') });
}

/** The child process: answers one GET with the upstream blob relayed in `mode`, then prints its figures. */
async function serve(mode: Mode, upstream: string, tmp: string): Promise<void> {
  const self = fileURLToPath(import.meta.url);
  const server = createServer((req, res) => {
    void (async () => {
      const cpu0 = processCpuSeconds(process.pid, process.pid);
      const all0 = processCpu();
      const t0 = performance.now();
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': BLOB_BYTES });
      const send = async (b: Buffer): Promise<void> => {
        if (!res.write(b)) await once(res, 'drain');
      };
      if (mode === 'download-in-worker') {
        const worker = new Worker(self, { workerData: { role: 'download', url: upstream, file: join(tmp, 'download') } });
        for await (const [m] of on(worker, 'message') as AsyncIterableIterator<[unknown]>) {
          if (m instanceof ArrayBuffer) {
            await send(Buffer.from(m));
            worker.postMessage(1);
          } else break;
        }
        await worker.terminate();
      } else {
        const hash = mode === 'hash' || mode === 'hash+write' ? createHash('sha256') : undefined;
        const writer = mode === 'hash+write' || mode === 'hash-in-worker' ? new BatchWriter(await open(join(tmp, 'fill'), 'w')) : undefined;
        const worker = mode === 'hash-in-worker' ? new Worker(self, { workerData: { role: 'hash' } }) : undefined;
        const { body } = await request(upstream);
        for await (const chunk of body as AsyncIterable<Buffer>) {
          hash?.update(chunk);
          if (worker) {
            const copy = ownCopy(chunk);
            worker.postMessage(copy, [copy]);
          }
          const written = writer?.push(chunk);
          await send(chunk);
          await written;
        }
        if (worker) {
          worker.postMessage('end');
          await once(worker, 'message');
          await worker.terminate();
        }
        hash?.digest('hex');
        await writer?.end();
      }
      res.end();
      const seconds = (performance.now() - t0) / 1000;
      const gib = BLOB_BYTES / 2 ** 30;
      process.stdout.write(`${JSON.stringify({ mode, seconds, mainCpu: (processCpuSeconds(process.pid, process.pid) - cpu0) / gib, processCpu: (processCpu() - all0) / gib })}\n`);
      server.close();
    })();
  });
  server.listen(0, '127.0.0.1', () => {
    const address = server.address();
    process.stdout.write(`${JSON.stringify({ port: typeof address === 'object' && address ? address.port : 0 })}\n`);
  });
}

async function runMode(mode: Mode, upstream: string, tmp: string): Promise<{ mbps: number; mainCpu: number; processCpu: number }> {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), 'serve', mode, upstream, tmp], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let buffered = '';
  let notify: (() => void) | undefined;
  child.stdout.on('data', (d: Buffer) => {
    buffered += d.toString('utf8');
    const parts = buffered.split('\n');
    buffered = parts.pop() ?? '';
    lines.push(...parts);
    notify?.();
  });
  const next = async (): Promise<Record<string, number | string>> => {
    while (lines.length === 0) await new Promise<void>((r) => (notify = r));
    return JSON.parse(lines.shift() ?? '{}') as Record<string, number | string>;
  };
  try {
    const { port } = await next();
    await curlDownload(`http://127.0.0.1:${String(port)}/`, BLOB_BYTES);
    const figures = await next();
    return { mbps: BLOB_BYTES / Number(figures['seconds']) / 1e6, mainCpu: Number(figures['mainCpu']), processCpu: Number(figures['processCpu']) };
  } finally {
    child.kill();
    await rm(join(tmp, 'fill'), { force: true });
    await rm(join(tmp, 'download'), { force: true });
  }
}

async function main(rounds: number): Promise<void> {
  const teardown = new Teardown();
  const dir = await makeTempDir('rc-probe-cold-relay-');
  teardown.add('probe files', () => rm(dir, { recursive: true, force: true }));
  try {
    const www = join(dir, 'www');
    await mkdir(www);
    const file = await open(join(www, 'blob'), 'w');
    const block = randomBytes(1024 * 1024);
    for (let i = 0; i < BLOB_BYTES / block.length; i++) await file.write(block);
    await file.close();
    const nginx = await startNginx(www, teardown);
    const upstream = `${nginx.url}/blob`;
    const results = new Map<string, { mbps: number[]; mainCpu: number[]; processCpu: number[] }>();
    const add = (name: string, r: { mbps: number; mainCpu: number; processCpu: number }): void => {
      const entry = results.get(name) ?? { mbps: [], mainCpu: [], processCpu: [] };
      entry.mbps.push(r.mbps);
      entry.mainCpu.push(r.mainCpu);
      entry.processCpu.push(r.processCpu);
      results.set(name, entry);
    };
    for (let round = 0; round < rounds; round++) {
      const direct = await curlDownload(upstream, BLOB_BYTES);
      add('nginx, curl directly', { mbps: BLOB_BYTES / direct.seconds / 1e6, mainCpu: Number.NaN, processCpu: Number.NaN });
      for (const mode of MODES) add(mode, await runMode(mode, upstream, dir));
    }
    console.log(`| way (median of ${rounds} rounds) | MB/s | main thread CPU s per GiB | process CPU s per GiB |`);
    console.log('|---|---:|---:|---:|');
    for (const [name, r] of results) {
      const f = (xs: number[], digits: number): string => (Number.isNaN(xs[0]) ? '–' : summarize(xs).median.toFixed(digits));
      console.log(`| ${name} | ${f(r.mbps, 0)} (${r.mbps.map((x) => x.toFixed(0)).join(' / ')}) | ${f(r.mainCpu, 2)} | ${f(r.processCpu, 2)} |`);
    }
  } finally {
    await teardown.runAll();
  }
}

if (!isMainThread) {
  void runWorker(workerData as Parameters<typeof runWorker>[0]);
} else if (process.argv[2] === 'serve') {
  void serve(process.argv[3] as Mode, process.argv[4] ?? '', process.argv[5] ?? '');
} else {
  await main(Number(process.argv[2] ?? 3));
}
