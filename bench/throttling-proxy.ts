import { createServer, connect, type Server, type Socket } from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { own, type Teardown } from './teardown.js';

/** Options for startThrottlingProxy. */
export interface ThrottleOptions {
  /** What every connection, together, may receive from the target per second: the link's bandwidth. */
  bytesPerSecond: number;
  /** Bytes the link may send at once after being idle; defaults to 10 ms at the rate (absorbs timer lateness). */
  burstBytes?: number;
}

/** A TCP proxy in front of a server whose answers all share one bandwidth limit, as a remote registry's link does. */
export interface ThrottlingProxy {
  /** `http://127.0.0.1:PORT`: give this to a client or a cache as the server's URL. */
  readonly url: string;
  /** `127.0.0.1:PORT` */
  readonly host: string;
  readonly bytesPerSecond: number;
  /** Bytes forwarded from the target to clients so far. */
  bytesForwarded(): number;
  /** Stops listening and drops every connection. */
  close(): Promise<void>;
}

/**
 * One token bucket for every connection: a chunk waits until the link has sent what was queued before it. The rate
 * is exact over time; a late timer lends at most `burst` bytes of catch-up, never more.
 */
class SharedLink {
  private nextFree = 0;

  constructor(
    private readonly bytesPerSecond: number,
    private readonly burstSeconds: number,
  ) {}

  /** Milliseconds `bytes` must wait before they may go out. */
  reserve(bytes: number): number {
    const now = performance.now() / 1000;
    this.nextFree = Math.max(this.nextFree, now - this.burstSeconds) + bytes / this.bytesPerSecond;
    // Delivered when the link has carried its last byte.
    return Math.max(0, (this.nextFree - now) * 1000);
  }
}

/**
 * Starts a plain TCP proxy on 127.0.0.1 that forwards to `targetUrl`'s host and port and throttles the direction
 * target → client to `bytesPerSecond` across all connections (requests go through unthrottled: they are small).
 * It understands nothing of HTTP, so keep-alive, auth and Range pass through as they are; backpressure reaches the
 * target (a throttled chunk holds up its connection's reads). Registered with `teardown`.
 */
export async function startThrottlingProxy(targetUrl: string, options: ThrottleOptions, teardown: Teardown): Promise<ThrottlingProxy> {
  const target = new URL(targetUrl);
  const targetPort = Number(target.port || (target.protocol === 'https:' ? 443 : 80));
  const burstBytes = options.burstBytes ?? options.bytesPerSecond / 100;
  const link = new SharedLink(options.bytesPerSecond, burstBytes / options.bytesPerSecond);
  const sockets = new Set<Socket>();
  let forwarded = 0;

  const throttle = (): Transform =>
    new Transform({
      transform(chunk: Buffer, _encoding, callback: TransformCallback) {
        const wait = link.reserve(chunk.length);
        const send = (): void => {
          forwarded += chunk.length;
          callback(null, chunk);
        };
        if (wait < 1) send();
        else setTimeout(send, wait);
      },
    });

  const server: Server = createServer((client) => {
    const upstream = connect(targetPort, target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.once('close', () => sockets.delete(s));
    }
    // Either side failing or ending ends both; errors are the clients' to see as a closed connection.
    const done = (): void => {
      client.destroy();
      upstream.destroy();
    };
    pipeline(client, upstream).catch(done);
    pipeline(upstream, throttle(), client).then(done, done);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as { port: number };
  let closed: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closed ??= new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const s of sockets) s.destroy();
    });
    return closed;
  };
  const removeFromTeardown = await own(teardown, `throttling proxy on ${port}`, close);
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    bytesPerSecond: options.bytesPerSecond,
    bytesForwarded: () => forwarded,
    async close() {
      removeFromTeardown();
      await close();
    },
  };
}
