import type { FastifyInstance } from 'fastify';
import { buildApp } from './app.js';
import type { Config } from './config/load.js';
import { createLogger } from './log.js';
import { createServices, type Services } from './services.js';

/** A running cache server. */
export interface RunningServer {
  app: FastifyInstance;
  services: Services;
  /** Base URL it listens on, e.g. http://127.0.0.1:5000. */
  url: string;
  close(): Promise<void>;
}

/** Starts the cache: store, database, HTTP listener. */
export async function startServer(config: Config, log = createLogger(config.logLevel)): Promise<RunningServer> {
  const services = await createServices(config, log);
  const app = buildApp(services);
  try {
    await app.listen({ host: config.listen.host, port: config.listen.port });
  } catch (err) {
    await services.close();
    throw err;
  }
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : config.listen.port;
  const host = config.listen.host.includes(':') ? `[${config.listen.host}]` : config.listen.host;
  log.info({ listen: `${host}:${port}`, storage: config.storage, registries: [...config.registries.keys()] }, 'registry-cache listening');
  let closing: Promise<void> | undefined;
  return {
    app,
    services,
    url: `http://${host}:${port}`,
    close: () => {
      closing ??= (async () => {
        await app.close();
        await services.close();
      })();
      return closing;
    },
  };
}
