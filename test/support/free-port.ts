import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/** Lowest port handed out here: below it sit well-known services. */
const MIN_PORT = 10_000;

/**
 * The kernel's ephemeral range: what it gives any socket bound to port 0 (every server the tests start with
 * `127.0.0.1:0`) and every outgoing connection. A port chosen here and bound later by another process must lie
 * outside it: a port just probed and released was handed straight to another process's port-0 listener, which then
 * held the port a cluster node was configured to listen on (EADDRINUSE, 1 run in ~5).
 */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > 0 ? low : 32_768;
  } catch {
    return 32_768;
  }
}

/** Whether 127.0.0.1:`port` can be listened on now. */
function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * A free TCP port on 127.0.0.1 for a server that is configured with it and binds it later: a random one between
 * 10,000 and the ephemeral range, probed by binding it.
 */
export async function findFreePort(): Promise<number> {
  const max = ephemeralLow() - 1;
  if (max <= MIN_PORT) throw new Error(`the ephemeral port range starts at ${max + 1}: no ports below it to choose from`);
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = MIN_PORT + Math.floor(Math.random() * (max - MIN_PORT + 1));
    if (await canListen(port)) return port;
  }
  throw new Error('no free port found below the ephemeral range');
}
