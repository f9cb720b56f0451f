import { createHash } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { request as httpRequest } from 'node:http';
import { Agent, Pool, request } from 'undici';
import { runCommand } from '../test/support/command.js';
import { MEDIA_TYPES, type Descriptor } from '../test/support/make-image.js';
import { latencyPercentiles, secondsSince } from './stats.js';

/** Every manifest and index media type, sent as one Accept header as containerd does. */
export const MANIFEST_ACCEPT = [MEDIA_TYPES.oci.manifest, MEDIA_TYPES.oci.index, MEDIA_TYPES.docker.manifest, MEDIA_TYPES.docker.index].join(', ');

/** One timed download. */
export interface Download {
  bytes: number;
  seconds: number;
}

/** Downloads `url` with curl into /dev/null: the leanest client, so the server is what is measured. */
export async function curlDownload(url: string, expectedBytes: number, headers: Record<string, string> = {}): Promise<Download> {
  const args = ['-sS', '-o', '/dev/null', '-w', '%{http_code} %{size_download} %{time_total}'];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
  const { stdout } = await runCommand('curl', [...args, url], { timeoutMs: 300_000 });
  const [code, size, seconds] = stdout.toString('utf8').trim().split(' ');
  if (code !== '200') throw new Error(`GET ${url}: HTTP ${code ?? '?'}`);
  if (Number(size) !== expectedBytes) throw new Error(`GET ${url}: ${size ?? '?'} bytes, expected ${expectedBytes}`);
  return { bytes: Number(size), seconds: Number(seconds) };
}

/**
 * Runs one curl per URL at the same time (each its own process and connection, as separate clients are) and times
 * the whole: from before the first starts until the last has exited, so the figure is aggregate throughput.
 */
export async function curlParallel(downloads: ReadonlyArray<{ url: string; bytes: number }>): Promise<Download> {
  const start = process.hrtime.bigint();
  const done = await Promise.all(downloads.map((d) => curlDownload(d.url, d.bytes)));
  return { bytes: done.reduce((n, d) => n + d.bytes, 0), seconds: secondsSince(start) };
}

/** A body fetched over its own fresh connection and hashed while it streamed. */
export interface HashedDownload extends Download {
  status: number;
  digest: string;
}

/** GETs `url` on a new socket (no pooling: each herd client is its own connection) and sha256-hashes the body. */
export function fetchHashed(url: string, headers: Record<string, string> = {}, timeoutMs = 600_000): Promise<HashedDownload> {
  const start = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { headers, agent: false, timeout: timeoutMs }, (res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      res.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        bytes += chunk.length;
      });
      res.once('end', () => {
        if (!res.complete) {
          reject(new Error(`GET ${url}: body cut after ${bytes} bytes`));
          return;
        }
        resolve({ status: res.statusCode ?? 0, bytes, seconds: secondsSince(start), digest: `sha256:${hash.digest('hex')}` });
      });
      res.once('error', reject);
      res.once('aborted', () => reject(new Error(`GET ${url}: aborted after ${bytes} bytes`)));
    });
    req.once('timeout', () => req.destroy(new Error(`GET ${url}: no progress for ${timeoutMs} ms`)));
    req.once('error', reject);
    req.end();
  });
}

/** What one image pull did. */
export interface PullResult {
  seconds: number;
  bytes: number;
  requests: number;
  /** From the start of the pull to the first byte of any blob body (NaN when there was none). */
  firstBlobByteSeconds: number;
}

/** Options for pullImage. */
export interface PullOptions {
  /** Blob downloads at once; a pull uses at most this many connections. */
  concurrency: number;
  headers?: Record<string, string>;
  /** Platform to pick from an index; defaults to linux/amd64. */
  architecture?: string;
}

interface ManifestJson {
  mediaType?: string;
  manifests?: Array<Descriptor & { platform?: { architecture?: string; os?: string } }>;
  config?: Descriptor;
  layers?: Descriptor[];
}

/**
 * Pulls like a container runtime: manifest (by tag or digest), the platform's manifest if that was an index, then
 * the config and every layer, `concurrency` at a time, each verified against its digest and size.
 */
export async function pullImage(baseUrl: string, repo: string, reference: string, opts: PullOptions): Promise<PullResult> {
  const start = process.hrtime.bigint();
  const dispatcher = new Agent({ connections: opts.concurrency, keepAliveTimeout: 10_000 });
  const headers = opts.headers ?? {};
  let bytes = 0;
  let requests = 0;
  let firstBlobByteSeconds = Number.NaN;
  const get = async (path: string, accept: string | undefined, expectDigest: string | undefined): Promise<{ body: Buffer; size: number }> => {
    requests++;
    const res = await request(`${baseUrl}${path}`, {
      dispatcher,
      headers: { ...headers, ...(accept ? { accept } : {}) },
      headersTimeout: 120_000,
      bodyTimeout: 120_000,
    });
    if (res.statusCode !== 200) {
      const text = await res.body.text();
      throw new Error(`GET ${path}: HTTP ${res.statusCode} ${text.slice(0, 200)}`);
    }
    const hash = createHash('sha256');
    const chunks: Buffer[] = [];
    let size = 0;
    const keep = accept !== undefined;
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      if (!keep && Number.isNaN(firstBlobByteSeconds)) firstBlobByteSeconds = secondsSince(start);
      hash.update(chunk);
      size += chunk.length;
      if (keep) chunks.push(chunk);
    }
    bytes += size;
    const digest = `sha256:${hash.digest('hex')}`;
    const expected = expectDigest ?? (Array.isArray(res.headers['docker-content-digest']) ? undefined : res.headers['docker-content-digest']);
    if (expected !== undefined && digest !== expected) throw new Error(`GET ${path}: body hashes to ${digest}, expected ${expected}`);
    return { body: Buffer.concat(chunks), size };
  };
  try {
    const isDigest = reference.startsWith('sha256:');
    let manifest = JSON.parse(
      (await get(`/v2/${repo}/manifests/${reference}`, MANIFEST_ACCEPT, isDigest ? reference : undefined)).body.toString('utf8'),
    ) as ManifestJson;
    if (manifest.manifests !== undefined) {
      const arch = opts.architecture ?? 'amd64';
      const child = manifest.manifests.find((m) => m.platform?.architecture === arch && m.platform.os === 'linux');
      if (!child) throw new Error(`${repo}:${reference} has no linux/${arch} manifest`);
      manifest = JSON.parse((await get(`/v2/${repo}/manifests/${child.digest}`, MANIFEST_ACCEPT, child.digest)).body.toString('utf8')) as ManifestJson;
    }
    const blobs = [...(manifest.config ? [manifest.config] : []), ...(manifest.layers ?? [])];
    await forEachLimited(blobs, opts.concurrency, async (blob) => {
      const { size } = await get(`/v2/${repo}/blobs/${blob.digest}`, undefined, blob.digest);
      if (size !== blob.size) throw new Error(`blob ${blob.digest}: ${size} bytes, expected ${blob.size}`);
    });
    return { seconds: secondsSince(start), bytes, requests, firstBlobByteSeconds };
  } finally {
    await dispatcher.close();
  }
}

/** Runs `fn` over `items` with at most `limit` at once; the first failure rejects after the running ones end. */
export async function forEachLimited<T>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown;
  const worker = async (): Promise<void> => {
    while (failure === undefined && next < items.length) {
      const index = next++;
      try {
        await fn(items[index] as T, index);
      } catch (err) {
        failure ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== undefined) throw failure;
}

/** What wrk reported. */
export interface WrkResult {
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  /** Socket errors plus non-2xx/3xx responses. */
  errors: number;
}

/** Options for runWrk. */
export interface WrkOptions {
  connections: number;
  threads: number;
  durationSeconds: number;
  headers?: Record<string, string>;
}

/** Runs wrk against one URL (bounded by its duration) and parses throughput, latency percentiles and errors. */
export async function runWrk(url: string, opts: WrkOptions): Promise<WrkResult> {
  const args = ['-t', String(opts.threads), '-c', String(opts.connections), '-d', `${opts.durationSeconds}s`, '--timeout', '10s', '--latency'];
  for (const [k, v] of Object.entries(opts.headers ?? {})) args.push('-H', `${k}: ${v}`);
  try {
    const { stdout } = await runCommand('wrk', [...args, url], { timeoutMs: (opts.durationSeconds + 30) * 1000 });
    return parseWrk(stdout.toString('utf8'));
  } catch (err) {
    // The command line carries the Authorization header; reports must not.
    throw new Error((err instanceof Error ? err.message : String(err)).replace(/(authorization: )(Basic|Bearer) [^'\s]+/gi, '$1$2 <redacted>'));
  }
}

/** Parses wrk's text report. */
export function parseWrk(text: string): WrkResult {
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(text);
  const total = /(\d+) requests in/.exec(text);
  const p50 = /^\s*50%\s+([\d.]+)(us|ms|s|m)\s*$/m.exec(text);
  const p99 = /^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$/m.exec(text);
  if (!rps || !total || !p50 || !p99) throw new Error(`cannot parse wrk output:\n${text}`);
  let errors = 0;
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  if (socket) errors += Number(socket[1]) + Number(socket[2]) + Number(socket[3]) + Number(socket[4]);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(text);
  if (non2xx) errors += Number(non2xx[1]);
  return {
    requestsPerSecond: Number(rps[1]),
    p50Ms: toMs(Number(p50[1]), p50[2] as string),
    p99Ms: toMs(Number(p99[1]), p99[2] as string),
    requests: Number(total[1]),
    errors,
  };
}

function toMs(value: number, unit: string): number {
  switch (unit) {
    case 'us':
      return value / 1000;
    case 's':
      return value * 1000;
    case 'm':
      return value * 60_000;
    default:
      return value;
  }
}

/** One request of a load test and what a correct answer hashes to. */
export interface LoadRequest {
  kind: string;
  path: string;
  accept?: string;
  /** sha256 the body must hash to. */
  digest: string;
}

/** What a load test measured. */
export interface LoadResult {
  seconds: number;
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  /** Up to five error descriptions, for the report. */
  errorSamples: string[];
  bytes: number;
}

/**
 * Sends every request of `plan` once, `concurrency` at a time over that many keep-alive connections, and checks
 * each status and body digest. Bounded by the plan's length and by `timeoutMs` overall.
 */
export async function runLoad(baseUrl: string, plan: readonly LoadRequest[], concurrency: number, headers: Record<string, string> = {}, timeoutMs = 300_000): Promise<LoadResult> {
  const pool = new Pool(baseUrl, { connections: concurrency, pipelining: 1, keepAliveTimeout: 30_000 });
  const latencies: number[] = [];
  const errorSamples: string[] = [];
  let errors = 0;
  let bytes = 0;
  const deadline = AbortSignal.timeout(timeoutMs);
  // Every request in flight listens on the one deadline.
  setMaxListeners(concurrency + 10, deadline);
  const start = process.hrtime.bigint();
  try {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < plan.length) {
        const item = plan[next++] as LoadRequest;
        const t0 = process.hrtime.bigint();
        try {
          if (deadline.aborted) throw new Error('load test deadline reached');
          const res = await pool.request({
            path: item.path,
            method: 'GET',
            headers: { ...headers, ...(item.accept ? { accept: item.accept } : {}) },
            signal: deadline,
            headersTimeout: 60_000,
            bodyTimeout: 60_000,
          });
          const hash = createHash('sha256');
          for await (const chunk of res.body as AsyncIterable<Buffer>) {
            hash.update(chunk);
            bytes += chunk.length;
          }
          if (res.statusCode !== 200) throw new Error(`${item.kind} ${item.path}: HTTP ${res.statusCode}`);
          const digest = `sha256:${hash.digest('hex')}`;
          if (digest !== item.digest) throw new Error(`${item.kind} ${item.path}: body hashes to ${digest}`);
        } catch (err) {
          errors++;
          if (errorSamples.length < 5) errorSamples.push(err instanceof Error ? err.message : String(err));
        }
        latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    await pool.close();
  }
  const seconds = secondsSince(start);
  const { p50, p99 } = latencyPercentiles(latencies);
  return { seconds, requestsPerSecond: plan.length / seconds, p50Ms: p50, p99Ms: p99, errors, errorSamples, bytes };
}
