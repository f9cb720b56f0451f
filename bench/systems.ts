import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { startDaemon, tail, waitUntil, type Daemon } from '../test/support/daemon.js';
import { findFreePort } from '../test/support/free-port.js';
import { makeTempDir, removeTempDir } from '../test/support/temp-dir.js';
import type { Teardown } from './teardown.js';

/** Thrown when a system refuses its configuration in a way that means "this build cannot run the scenario". */
export class SkipScenario extends Error {
  override readonly name = 'SkipScenario';
}

/** A server process the harness owns: its port stays fixed across restarts, its storage is its own. */
export interface ManagedServer {
  /** Label used in tables: `peer`, `registry-cache`, `nginx`, … */
  readonly name: string;
  /** `http://127.0.0.1:PORT` */
  readonly url: string;
  readonly port: number;
  /** PID of the server process itself (the node process for registry-cache), for /proc sampling. */
  pid(): number;
  /** Its storage directory (deleted by restartClean). */
  readonly storage: string;
  /** Stops the process, deletes its storage and starts it again: the way to make it cold. */
  restartClean(): Promise<void>;
  /** Stops the process and starts it again on the same storage (a fresh process, warm content). */
  restart(): Promise<void>;
  /** Reads its log so far. */
  readLog(): Promise<string>;
  /** Stops the process and deletes everything it had (config, logs, storage). */
  destroy(): Promise<void>;
}

/** How to launch one kind of server; `port` and `storage` are chosen by the harness. */
interface LaunchSpec {
  name: string;
  /** Writes any config files and returns the command to run. */
  prepare(rootDir: string, port: number, storage: string): Promise<{ file: string; args: string[]; env?: Record<string, string> }>;
  /** True once the server answers. */
  ready(url: string): Promise<boolean>;
  /** Seconds to wait for readiness. */
  startTimeoutMs?: number;
}

const START_ATTEMPTS = 3;

async function startManaged(spec: LaunchSpec, teardown: Teardown): Promise<ManagedServer> {
  const rootDir = await makeTempDir(`rc-bench-${spec.name.replace(/[^a-z0-9]+/gi, '-')}-`);
  const storage = join(rootDir, 'storage');
  let port = await findFreePort();
  let daemon: Daemon | undefined;
  let starts = 0;

  const launch = async (): Promise<void> => {
    for (let attempt = 1; ; attempt++) {
      await mkdir(storage, { recursive: true });
      const { file, args, env } = await spec.prepare(rootDir, port, storage);
      if (teardown.closing) throw new Error(`interrupted: not starting ${spec.name}`);
      starts++;
      const started = await startDaemon(file, args, join(rootDir, `${starts}.log`), env);
      // Known at once, so a teardown that runs while this one still starts stops it too.
      daemon = started;
      teardown.lastResort(rootDir, () => {
        if (!started.exited()) process.kill(started.pid, 'SIGKILL');
        rmSync(rootDir, { recursive: true, force: true });
      });
      const url = `http://127.0.0.1:${port}`;
      try {
        await waitUntil(`${spec.name} on ${url}`, () => spec.ready(url), { daemon: started, timeoutMs: spec.startTimeoutMs ?? 30_000 });
        return;
      } catch (err) {
        daemon = undefined;
        await started.stop(2_000);
        const log = await started.readLog();
        if (/unknown key/i.test(log)) throw new SkipScenario(`${spec.name} refused its configuration: ${tail(log, 5).trim()}`);
        // The port was free when probed but a restart can lose it to another process; take a fresh one.
        if (attempt < START_ATTEMPTS && /address already in use/i.test(log)) {
          port = await findFreePort();
          continue;
        }
        throw err;
      }
    }
  };
  const stop = async (): Promise<void> => {
    const d = daemon;
    daemon = undefined;
    if (d) await d.stop(10_000);
  };
  const removeFromTeardown = teardown.add(`${spec.name} (${rootDir})`, async () => {
    await stop();
    await removeTempDir(rootDir);
    teardown.lastResort(rootDir, undefined);
  });
  try {
    await launch();
  } catch (err) {
    removeFromTeardown();
    await stop();
    await removeTempDir(rootDir);
    throw err;
  }
  return {
    name: spec.name,
    get url() {
      return `http://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    storage,
    pid() {
      if (!daemon) throw new Error(`${spec.name} is not running`);
      return daemon.pid;
    },
    async restartClean() {
      await stop();
      await rm(storage, { recursive: true, force: true });
      await launch();
    },
    async restart() {
      await stop();
      await launch();
    },
    async readLog() {
      return daemon ? daemon.readLog() : '';
    },
    async destroy() {
      removeFromTeardown();
      await stop();
      await removeTempDir(rootDir);
      teardown.lastResort(rootDir, undefined);
    },
  };
}

async function answers(url: string, ok: (status: number) => boolean): Promise<boolean> {
  const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
  await res.body?.cancel();
  return ok(res.status);
}

/** Options for the distribution registry in proxy mode (the peer). */
export interface PeerOptions {
  name?: string;
  remoteUrl: string;
  username?: string;
  password?: string;
}

/** Starts Debian's docker-registry in `proxy:` mode in front of `remoteUrl`, with its access log off (as the cache logs at warn). */
export async function startPeer(opts: PeerOptions, teardown: Teardown): Promise<ManagedServer> {
  return startManaged(
    {
      name: opts.name ?? 'peer',
      async prepare(rootDir, port, storage) {
        const config = {
          version: '0.1',
          log: { level: 'warn', formatter: 'text', accesslog: { disabled: true } },
          storage: { filesystem: { rootdirectory: storage }, maintenance: { uploadpurging: { enabled: false } } },
          http: { addr: `127.0.0.1:${port}`, secret: 'registry-cache-bench' },
          proxy: {
            remoteurl: opts.remoteUrl,
            ...(opts.username === undefined ? {} : { username: opts.username, password: opts.password ?? '' }),
          },
        };
        const file = join(rootDir, 'config.yml');
        // JSON is valid YAML.
        await writeFile(file, JSON.stringify(config, null, 2));
        return { file: 'docker-registry', args: ['serve', file] };
      },
      ready: (url) => answers(`${url}/v2/`, (s) => s === 200),
    },
    teardown,
  );
}

/** Options for one registry-cache process. */
export interface CacheOptions {
  name?: string;
  /** The `registries` key, e.g. `127.0.0.1:5000` (the upstream's own host:port, also `defaultRegistry`). */
  registryHost: string;
  /** Where that registry is reached (the upstream itself, or a counting proxy in front of it). */
  upstreamUrl: string;
  /** Merged over the bench defaults (NeverVerify, logLevel warn, tagTtl 0s). */
  config?: Record<string, unknown>;
  /** Extra node flags, e.g. `--cpu-prof`. */
  nodeFlags?: string[];
}

/** The node flags registry-cache ships with (package.json `start`, the Dockerfile's ENTRYPOINT): the bench measures the product as run. */
export const SERVER_NODE_FLAGS = ['--max-semi-space-size=2', '--expose-gc'];

/** The compiled CLI the harness runs by default; `npm run bench` builds it first. */
export const CACHE_CLI = resolve(import.meta.dirname, '..', '..', '..', 'dist', 'cli.js');

let cacheCli = CACHE_CLI;

/** Runs another build of registry-cache (`--cache-cli`), e.g. a patched copy of dist/ to A/B a change. */
export function useCacheCli(path: string): void {
  cacheCli = resolve(path);
}

/** The CLI registry-cache processes are started from. */
export function currentCacheCli(): string {
  return cacheCli;
}

/** Starts `node dist/cli.js serve --config FILE` with its own storage; the PID is the node process itself. */
export async function startCache(opts: CacheOptions, teardown: Teardown): Promise<ManagedServer> {
  return startManaged(
    {
      name: opts.name ?? 'registry-cache',
      async prepare(rootDir, port, storage) {
        const config = {
          listen: `127.0.0.1:${port}`,
          storage,
          registries: { [opts.registryHost]: { url: opts.upstreamUrl } },
          defaultRegistry: opts.registryHost,
          imagePullCredentialsVerificationPolicy: 'NeverVerify',
          logLevel: 'warn',
          tagTtl: '0s',
          // Eviction follows the filesystem's usage by default; the machine's disk must not decide what a run keeps.
          imageGCHighThresholdPercent: 100,
          imageGCLowThresholdPercent: 99,
          ...opts.config,
        };
        const file = join(rootDir, 'config.yml');
        await writeFile(file, JSON.stringify(config, null, 2));
        return { file: process.execPath, args: [...SERVER_NODE_FLAGS, ...(opts.nodeFlags ?? []), cacheCli, 'serve', '--config', file] };
      },
      // 401 is the answer under any policy but NeverVerify.
      ready: (url) => answers(`${url}/v2/`, (s) => s === 200 || s === 401),
    },
    teardown,
  );
}

/** Starts nginx serving the files of `root` with sendfile on, one worker, no access log. */
export async function startNginx(root: string, teardown: Teardown): Promise<ManagedServer> {
  return startManaged(
    {
      name: 'nginx',
      async prepare(rootDir, port) {
        const temp = join(rootDir, 'nginx-tmp');
        await mkdir(temp, { recursive: true });
        const isRoot = process.getuid?.() === 0;
        const config = [
          'daemon off;',
          'worker_processes 1;',
          // As root nginx would switch its workers to nobody, who cannot read a 0700 temp dir.
          ...(isRoot ? ['user root;'] : []),
          `pid ${join(rootDir, 'nginx.pid')};`,
          `error_log ${join(rootDir, 'error.log')} warn;`,
          'events { worker_connections 1024; }',
          'http {',
          '  access_log off;',
          '  sendfile on;',
          '  tcp_nopush on;',
          '  default_type application/octet-stream;',
          `  client_body_temp_path ${join(temp, 'body')};`,
          `  proxy_temp_path ${join(temp, 'proxy')};`,
          `  fastcgi_temp_path ${join(temp, 'fastcgi')};`,
          `  uwsgi_temp_path ${join(temp, 'uwsgi')};`,
          `  scgi_temp_path ${join(temp, 'scgi')};`,
          `  server { listen 127.0.0.1:${port}; root ${root}; location / { } }`,
          '}',
          '',
        ].join('\n');
        const file = join(rootDir, 'nginx.conf');
        await writeFile(file, config);
        return { file: 'nginx', args: ['-p', rootDir, '-c', file, '-e', join(rootDir, 'error.log')] };
      },
      ready: (url) => answers(`${url}/`, (s) => s > 0),
    },
    teardown,
  );
}

/**
 * PIDs of processes whose command line ends with `serve <configFile>`: how a docker-registry started by
 * test/support (which keeps its PID to itself) is found for a last-resort kill. Only that exact config path matches.
 */
export function pidsServing(configFile: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').filter(Boolean);
      if (args.at(-2) === 'serve' && args.at(-1) === configFile) pids.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

/** A last-resort undo for a docker-registry from test/support: SIGKILL it (found by its config path) and delete its dir. */
export function registryLastResort(rootDir: string): () => void {
  return () => {
    for (const pid of pidsServing(join(rootDir, 'config.yml'))) process.kill(pid, 'SIGKILL');
    rmSync(rootDir, { recursive: true, force: true });
  };
}
