import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { loadConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/log.js';
import { startServer, type RunningServer } from '../../src/main.js';

/** A registry-cache on 127.0.0.1 with its own temp store, and its log lines. */
export interface TestCache extends RunningServer {
  storage: string;
  logs: string[];
  /** Stops the server and removes the store (unless `keepStorage`). */
  stop(options?: { keepStorage?: boolean }): Promise<void>;
}

/** Starts registry-cache with `registries` (host → url) and any other config keys; port 0. */
export async function startCache(
  registries: Record<string, string>,
  overrides: Record<string, unknown> = {},
  storage?: string,
  services: Parameters<typeof startServer>[2] = {},
): Promise<TestCache> {
  const dir = storage ?? (await mkdtemp(join(tmpdir(), 'rc-store-')));
  const hosts = Object.keys(registries);
  const config = loadConfig({
    env: {},
    overrides: {
      listen: '127.0.0.1:0',
      storage: dir,
      registries: Object.fromEntries(Object.entries(registries).map(([h, url]) => [h, { url }])),
      defaultRegistry: hosts[0],
      logLevel: 'info',
      // Eviction follows the filesystem by default; the test machine's disk must not decide what a test keeps.
      imageGCHighThresholdPercent: 100,
      imageGCLowThresholdPercent: 99,
      ...overrides,
    },
  });
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logs.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      cb();
    },
  });
  const server = await startServer(config, createLogger(config.logLevel, sink), services);
  return {
    ...server,
    storage: dir,
    logs,
    stop: async (options = {}) => {
      await server.close();
      if (!options.keepStorage) await rm(dir, { recursive: true, force: true });
    },
  };
}
