import type { FastifyInstance } from 'fastify';
import { buildApp, buildOpsApp } from './app.js';
import type { Config } from './config/load.js';
import { IdleCollector } from './lifecycle/idle-memory.js';
import { createLogger } from './log.js';
import { createServices, type Services } from './services.js';

/** A running cache server. */
export interface RunningServer {
  app: FastifyInstance;
  services: Services;
  /** Base URL it listens on, e.g. http://127.0.0.1:5000. */
  url: string;
  /** Base URL of the separate metrics/probe listener, when configured. */
  opsUrl: string | undefined;
  /** Base URL of the peer listener, when sharing between nodes is on. */
  peerUrl: string | undefined;
  close(): Promise<void>;
}

/** Quiet time after requests or downloads before a memory-reducing collection: a pull's requests come within ms. */
const IDLE_QUIET_MS = 1_000;

/** Starts the cache: store, database, HTTP listener. */
export async function startServer(
  config: Config,
  log = createLogger(config.logLevel),
  options: Parameters<typeof createServices>[2] = {},
): Promise<RunningServer> {
  const services = await createServices(config, log, options);
  const app = buildApp(services, { opsSeparately: config.metricsListen !== undefined });
  const ops = config.metricsListen ? buildOpsApp(services) : undefined;
  const peerApp = services.peers?.listener(services.blobs);
  let url: string;
  let opsUrl: string | undefined;
  let peerUrl: string | undefined;
  try {
    url = await listenOn(app, config.listen);
    if (ops && config.metricsListen) opsUrl = await listenOn(ops, config.metricsListen);
    if (peerApp && config.peers) peerUrl = await listenOn(peerApp, config.peers.listen);
  } catch (err) {
    await app.close();
    await ops?.close();
    await peerApp?.close();
    await services.close();
    throw err;
  }
  // Memory goes back to the OS once a burst of pulls is over (README "Memory"); needs node --expose-gc.
  let requests = 0;
  const counted = (): void => void requests++;
  app.server.on('request', counted);
  peerApp?.server.on('request', counted);
  const idle = new IdleCollector({
    quietMs: IDLE_QUIET_MS,
    activity: () => requests,
    busy: () => services.blobs.activeFills > 0,
    onCollected: ({ ms, rssBefore, rssAfter }) => {
      services.metrics.idleCollections.inc();
      log.debug({ ms: Math.round(ms), rssBefore, rssAfter }, 'gave memory back after work');
    },
  }).start();
  log.info({ listen: url.replace('http://', ''), metrics: opsUrl, peers: peerUrl, storage: config.storage, registries: [...config.registries.keys()] }, 'registry-cache listening');
  let closing: Promise<void> | undefined;
  return {
    app,
    services,
    url,
    opsUrl,
    peerUrl,
    close: () => {
      closing ??= (async () => {
        idle.stop();
        await ops?.close();
        // Other nodes reading a fill from this one lose it now and finish from the upstream.
        const peersClosed = peerApp?.close();
        peerApp?.server.closeAllConnections();
        await peersClosed;
        // Stop accepting; let responses in flight finish, but not past the deadline.
        const deadline = setTimeout(() => {
          log.warn({ timeoutMs: config.shutdownTimeoutMs }, 'shutdown deadline reached; closing open connections');
          app.server.closeAllConnections();
        }, config.shutdownTimeoutMs);
        deadline.unref();
        await app.close();
        clearTimeout(deadline);
        await services.close();
      })();
      return closing;
    },
  };
}

async function listenOn(app: FastifyInstance, listen: { host: string; port: number }): Promise<string> {
  await app.listen({ host: listen.host, port: listen.port });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : listen.port;
  const host = listen.host.includes(':') ? `[${listen.host}]` : listen.host;
  return `http://${host}:${port}`;
}
