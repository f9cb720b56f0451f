import { Agent, createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { throttled, type SharedBandwidth } from './bandwidth.js';
import { own, type Teardown } from './teardown.js';

/** What the proxy saw so far. */
export interface ProxyCounts {
  /** Requests by `METHOD /path` (query dropped). */
  byRequest: Map<string, number>;
  /** Most requests in flight at once. */
  peakInFlight: number;
  /** Most distinct repositories with a request in flight at once: images transferring in parallel. */
  peakRepositoriesInFlight: number;
  total: number;
  /** Response body bytes sent to clients (what crossed the modelled link). */
  responseBytes: number;
}

/** A pass-through HTTP proxy in front of the upstream that counts requests and measures concurrency. */
export interface CountingProxy {
  /** `http://127.0.0.1:PORT` */
  url: string;
  counts(): ProxyCounts;
  /** Forgets everything counted so far. */
  reset(): void;
  close(): Promise<void>;
}

const REPOSITORY = /^\/v2\/(.+)\/(?:manifests|blobs|tags|referrers)\//;

/** Options of the counting proxy. */
export interface CountingProxyOptions {
  /** Every response body shares this bandwidth: a registry (or an egress link) slower than loopback. */
  bandwidth?: SharedBandwidth;
}

/**
 * Starts the proxy on 127.0.0.1 in this process. It forwards every request verbatim (headers included, so auth works)
 * and streams bodies both ways; a request is "in flight" from its arrival until its response body has been sent.
 */
export async function startCountingProxy(targetUrl: string, teardown: Teardown, options: CountingProxyOptions = {}): Promise<CountingProxy> {
  const target = new URL(targetUrl);
  const agent = new Agent({ keepAlive: true, maxSockets: 256 });
  let byRequest = new Map<string, number>();
  let inFlight = 0;
  let peakInFlight = 0;
  let total = 0;
  let peakRepositories = 0;
  let responseBytes = 0;
  const repositories = new Map<string, number>();

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const key = `${req.method ?? 'GET'} ${path}`;
    byRequest.set(key, (byRequest.get(key) ?? 0) + 1);
    total++;
    inFlight++;
    peakInFlight = Math.max(peakInFlight, inFlight);
    const repo = REPOSITORY.exec(path)?.[1];
    if (repo !== undefined) {
      repositories.set(repo, (repositories.get(repo) ?? 0) + 1);
      peakRepositories = Math.max(peakRepositories, repositories.size);
    }
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      inFlight--;
      if (repo !== undefined) {
        const left = (repositories.get(repo) ?? 1) - 1;
        if (left <= 0) repositories.delete(repo);
        else repositories.set(repo, left);
      }
    };
    res.once('close', finish);
    const headers = { ...req.headers, host: target.host };
    const upstream = request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers, agent },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        const counter = new Transform({
          transform(chunk: Buffer, _encoding, done) {
            responseBytes += chunk.length;
            done(null, chunk);
          },
        });
        const stages = options.bandwidth ? [throttled(options.bandwidth), counter] : [counter];
        pipeline([upRes, ...stages, res]).catch(() => res.destroy());
      },
    );
    upstream.once('error', () => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
    pipeline(req, upstream).catch(() => upstream.destroy());
  };

  const server: Server = createServer(handle);
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  let closed: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closed ??= new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
      agent.destroy();
    });
    return closed;
  };
  const removeFromTeardown = await own(teardown, `counting proxy on ${port}`, close);
  return {
    url: `http://127.0.0.1:${port}`,
    counts: () => ({ byRequest: new Map(byRequest), peakInFlight, peakRepositoriesInFlight: peakRepositories, total, responseBytes }),
    reset() {
      byRequest = new Map();
      responseBytes = 0;
      peakInFlight = inFlight;
      peakRepositories = repositories.size;
      total = 0;
    },
    async close() {
      removeFromTeardown();
      await close();
    },
  };
}
