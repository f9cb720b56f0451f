import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon, tail, type Daemon } from './daemon.js';

/** A registry-cache running as a child process: a crash ends the child, not the test runner, and is observable. */
export interface CacheProcess {
  url: string;
  /** The operations listener's URL, when `metricsListen` is configured. */
  metricsUrl: string | undefined;
  daemon: Daemon;
  /** Its temp directory (config, store, log). */
  dir: string;
  /** Stops the process (SIGTERM, then SIGKILL) and removes its directory. */
  stop(): Promise<void>;
}

/**
 * Starts `dist/cli.js serve` (build first: `npm test` does) with `registries` (host → url) and extra YAML lines,
 * on 127.0.0.1 port 0, and resolves with its URL once it logs that it listens.
 */
export async function startCacheProcess(
  registries: Record<string, string>,
  extraYaml: string[] = [],
  cli = 'dist/cli.js',
  options: { env?: Record<string, string>; nodeFlags?: string[] } = {},
): Promise<CacheProcess> {
  const dir = await mkdtemp(join(tmpdir(), 'rc-proc-'));
  const config = join(dir, 'config.yaml');
  const hosts = Object.keys(registries);
  await writeFile(
    config,
    [
      'listen: 127.0.0.1:0',
      `storage: ${join(dir, 'store')}`,
      // Eviction follows the filesystem by default; the test machine's disk must not decide what a test keeps.
      'imageGCHighThresholdPercent: 100',
      'imageGCLowThresholdPercent: 99',
      'registries:',
      ...Object.entries(registries).map(([host, url]) => `  "${host}": { url: "${url}" }`),
      `defaultRegistry: "${hosts[0] ?? 'docker.io'}"`,
      ...extraYaml,
      '',
    ].join('\n'),
  );
  const daemon = await startDaemon(process.execPath, [...(options.nodeFlags ?? []), cli, 'serve', '--config', config], join(dir, 'cache.log'), options.env);
  const stop = async (): Promise<void> => {
    await daemon.stop();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    let metricsUrl: string | undefined;
    const url = await new Promise<string>((resolve, reject) => {
      let out = '';
      daemon.child.stdout?.on('data', (c: Buffer) => {
        out += c.toString();
        const m = /"listen":"([^"]+)"/.exec(out);
        if (!m) return;
        // The same line names the operations listener, when there is one.
        metricsUrl = /"metrics":"(http:\/\/[^"]+)"/.exec(out)?.[1];
        resolve(`http://${m[1]}`);
      });
      daemon.child.once('exit', () => void daemon.readLog().then((log) => reject(new Error(`registry-cache exited early:\n${tail(log)}`))));
    });
    return { url, metricsUrl, daemon, dir, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
