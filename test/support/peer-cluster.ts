import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCacheProcess, type CacheProcess } from './cache-process.js';
import { findFreePort } from './free-port.js';

/** One registry-cache process of a sharing cluster on loopback. */
export interface ClusterNode extends CacheProcess {
  /** `host:port` of its peer listener: its identity on the ring. */
  peer: string;
  /** Its operations listener (metrics, /debug/peers). */
  opsUrl(): Promise<string>;
}

/** K registry-cache processes with a static `peers` list and one shared secret, each in front of `upstream`. */
export async function startCluster(
  k: number,
  upstream: { host: string; url: string },
  extraYaml: (i: number) => string[] = () => [],
): Promise<{ nodes: ClusterNode[]; secret: string; stop(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'rc-cluster-'));
  const secret = randomBytes(32).toString('hex');
  const secretFile = join(dir, 'peer-secret');
  await writeFile(secretFile, secret, { mode: 0o600 });
  const peers = (await Promise.all(Array.from({ length: k }, () => findFreePort()))).map((p) => `127.0.0.1:${p}`);
  const started = await Promise.allSettled(
    peers.map((peer, i) =>
      startCacheProcess({ [upstream.host]: upstream.url }, [
        `peers: [${peers.map((p) => `"${p}"`).join(', ')}]`,
        `peerListen: "${peer}"`,
        `peerSecret: "${secretFile}"`,
        'metricsListen: 127.0.0.1:0',
        ...extraYaml(i),
      ]),
    ),
  );
  const nodes: ClusterNode[] = [];
  for (const [i, s] of started.entries()) {
    if (s.status === 'fulfilled') nodes.push({ ...s.value, peer: peers[i] as string, opsUrl: () => opsUrlOf(s.value) });
  }
  const stop = async (): Promise<void> => {
    await Promise.all(nodes.map((n) => n.stop()));
    await rm(dir, { recursive: true, force: true });
  };
  const failed = started.find((s) => s.status === 'rejected');
  if (failed) {
    await stop();
    throw (failed as PromiseRejectedResult).reason;
  }
  return { nodes, secret, stop };
}

/** The operations listener's URL, as the cache process logged it when it started listening. */
export async function opsUrlOf(node: CacheProcess): Promise<string> {
  if (node.metricsUrl === undefined) throw new Error('the node logged no operations listener');
  return node.metricsUrl;
}

/** The sum of a metric's samples whose labels contain `labels` (e.g. `source="peer"`), from a node's /metrics. */
export async function metricValue(node: ClusterNode, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`${await node.opsUrl()}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (m?.[1] === name && (m[2] ?? '').includes(labels)) sum += Number(m[3]);
  }
  return sum;
}

/** A streamed GET, hashed as it arrives (a 64 MiB body is never held in memory). */
export interface HashedGet {
  /** Resolves with the first body chunk. */
  firstByte: Promise<void>;
  done: Promise<{ status: number; digest: string; bytes: number; complete: boolean }>;
}

/** Starts a GET of `url` and hashes its body. */
export function hashedGet(url: string): HashedGet {
  let gotFirst!: () => void;
  const firstByte = new Promise<void>((resolve) => (gotFirst = resolve));
  const done = new Promise<{ status: number; digest: string; bytes: number; complete: boolean }>((resolve) => {
    const hash = createHash('sha256');
    let bytes = 0;
    let finished = false;
    const finish = (status: number, complete: boolean): void => {
      if (finished) return;
      finished = true;
      resolve({ status, digest: `sha256:${hash.digest('hex')}`, bytes, complete });
    };
    const req = request(url, { agent: false }, (res) => {
      res.on('data', (c: Buffer) => {
        if (bytes === 0) gotFirst();
        bytes += c.length;
        hash.update(c);
      });
      res.on('end', () => finish(res.statusCode ?? 0, res.complete));
      res.on('error', () => finish(res.statusCode ?? 0, false));
      res.on('aborted', () => finish(res.statusCode ?? 0, false));
    });
    req.on('error', () => finish(0, false));
    req.end();
  });
  return { firstByte, done };
}
