import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { runCommand } from './command.js';
import { startDaemon, waitUntil, type Daemon } from './daemon.js';
import { findFreePort } from './free-port.js';
import { makeTempDir, removeTempDir } from './temp-dir.js';

/** A user the registry's htpasswd file accepts. */
export interface RegistryUser {
  user: string;
  pass: string;
}

/** Options for startDockerRegistry. */
export interface DockerRegistryOptions {
  /** Turns on auth.htpasswd (Basic auth) with these users; anonymous when absent. */
  htpasswd?: RegistryUser[];
  /** Serves HTTPS with this PEM certificate and key; with `clientCas`, requires client certificates issued by them. */
  tls?: { cert: string; key: string; clientCas?: string };
  /** Path of the `docker-registry` binary; defaults to the one on PATH. */
  binary?: string;
  signal?: AbortSignal;
}

/** One line of the registry's combined-format access log. */
export interface AccessLogEntry {
  method: string;
  /** Path and query as the client sent them, e.g. `/v2/a/manifests/v1?ns=x`. */
  uri: string;
  status: number;
  bytes: number;
  userAgent: string;
}

/** A running distribution registry on 127.0.0.1 with its own storage. */
export interface DockerRegistry {
  /** `http://127.0.0.1:PORT` (`https://` with `tls`) */
  url: string;
  /** `127.0.0.1:PORT`, the form image references and hosts.toml directories use. */
  host: string;
  port: number;
  /** Temp dir holding config.yml, htpasswd, registry.log and data/. */
  rootDir: string;
  /** The combined stdout/stderr log, kept for debugging until stop(). */
  logFile: string;
  /** Reads the registry's log so far, for dumping when a test fails. */
  readLog(): Promise<string>;
  /** Requests served so far, from the access log; a line is written just after its response, so poll if counting. */
  requests(): Promise<AccessLogEntry[]>;
  /** Polls the access log until `done(entries)` holds (default 5 s), because lines land just after their responses. */
  waitForRequests(done: (entries: AccessLogEntry[]) => boolean, timeoutMs?: number): Promise<AccessLogEntry[]>;
  /**
   * Requests served so far, once every response already received has its line: sends a marker request of its own
   * and waits for that line (HTTP registries only). Markers never appear in any listing.
   */
  settledRequests(): Promise<AccessLogEntry[]>;
  /** Stops the process (SIGTERM, then SIGKILL) and deletes rootDir. */
  stop(): Promise<void>;
}

const START_ATTEMPTS = 3;
// distribution 2.8 always writes "-" for the user, even after htpasswd auth, so the field is not captured.
const ACCESS_LOG_LINE = /^\S+ - \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+) "[^"]*" "([^"]*)"$/;

/** Starts `docker-registry serve` on a free port and resolves once GET /v2/ answers (200, or 401 with htpasswd). */
export async function startDockerRegistry(opts: DockerRegistryOptions = {}): Promise<DockerRegistry> {
  const rootDir = await makeTempDir('rc-registry-');
  try {
    let htpasswdPath: string | undefined;
    if (opts.htpasswd !== undefined) {
      htpasswdPath = join(rootDir, 'htpasswd');
      await writeFile(htpasswdPath, await htpasswdLines(opts.htpasswd, opts.signal), { mode: 0o600 });
    }
    let tls: TlsFiles | undefined;
    if (opts.tls !== undefined) {
      tls = { certificate: join(rootDir, 'server.pem'), key: join(rootDir, 'server-key.pem') };
      await writeFile(tls.certificate, opts.tls.cert);
      await writeFile(tls.key, opts.tls.key, { mode: 0o600 });
      if (opts.tls.clientCas !== undefined) {
        tls.clientcas = [join(rootDir, 'client-cas.pem')];
        await writeFile(tls.clientcas[0] as string, opts.tls.clientCas);
      }
    }
    // The port is free when probed but could be taken before the registry binds it; retry on a fresh one.
    for (let attempt = 1; ; attempt++) {
      const port = await findFreePort();
      const configPath = join(rootDir, 'config.yml');
      await writeFile(configPath, JSON.stringify(registryConfig(rootDir, port, htpasswdPath, tls), null, 2));
      const logFile = join(rootDir, `registry-${attempt}.log`);
      const daemon = await startDaemon(opts.binary ?? 'docker-registry', ['serve', configPath], logFile);
      const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
      try {
        await waitUntil(
          `docker-registry on ${url}`,
          // Over TLS (maybe requiring a client certificate) a completed handshake says it is listening.
          tls ? () => tlsHandshakes(port) : async () => {
            const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1_000) });
            await res.body?.cancel();
            return res.status === 200 || res.status === 401;
          },
          { daemon, signal: opts.signal },
        );
      } catch (error) {
        await daemon.stop();
        const log = await daemon.readLog();
        if (attempt < START_ATTEMPTS && log.includes('address already in use')) continue;
        throw error;
      }
      return runningRegistry(daemon, rootDir, port, tls !== undefined);
    }
  } catch (error) {
    await removeTempDir(rootDir);
    throw error;
  }
}

/** distribution's `http.tls` section: file paths. */
interface TlsFiles {
  certificate: string;
  key: string;
  clientcas?: string[];
}

/** Whether a TLS handshake with 127.0.0.1:port completes (without verifying: this only asks whether it listens). */
function tlsHandshakes(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
    socket.setTimeout(1_000, () => {
      socket.destroy();
      resolve(false);
    });
  });
}

/** The path of settledRequests' markers; any answer (404, or 401 with htpasswd) gets an access-log line. */
const MARKER_PREFIX = '/v2/settled-marker-';

function runningRegistry(daemon: Daemon, rootDir: string, port: number, tls: boolean): DockerRegistry {
  const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  const served = async (): Promise<AccessLogEntry[]> => parseAccessLog(await daemon.readLog()).filter((e) => !e.uri.startsWith(MARKER_PREFIX));
  let markers = 0;
  return {
    url,
    host: `127.0.0.1:${port}`,
    port,
    rootDir,
    logFile: daemon.logFile,
    readLog: () => daemon.readLog(),
    requests: served,
    async waitForRequests(done, timeoutMs = 5_000) {
      let entries: AccessLogEntry[] = [];
      await waitUntil(
        'registry access log',
        async () => {
          entries = await served();
          return done(entries);
        },
        { timeoutMs, intervalMs: 20 },
      );
      return entries;
    },
    async settledRequests() {
      if (tls) throw new Error('settledRequests: HTTP registries only');
      const marker = `${MARKER_PREFIX}${++markers}/tags/list`;
      await (await fetch(`${url}${marker}`)).arrayBuffer();
      await waitUntil('the marker in the registry access log', async () => parseAccessLog(await daemon.readLog()).some((e) => e.uri === marker), { timeoutMs: 5_000, intervalMs: 20 });
      return served();
    },
    async stop() {
      await daemon.stop();
      await removeTempDir(rootDir);
    },
  };
}

/** Picks the access-log lines out of a registry log (the rest is logrus text). */
export function parseAccessLog(log: string): AccessLogEntry[] {
  const entries: AccessLogEntry[] = [];
  for (const line of log.split('\n')) {
    const m = ACCESS_LOG_LINE.exec(line);
    if (m === null) continue;
    const [, method, uri, status, bytes, userAgent] = m;
    if (method === undefined || uri === undefined || status === undefined || bytes === undefined || userAgent === undefined) continue;
    entries.push({
      method,
      uri,
      status: Number(status),
      bytes: Number(bytes),
      userAgent,
    });
  }
  return entries;
}

async function htpasswdLines(users: RegistryUser[], signal?: AbortSignal): Promise<string> {
  const lines: string[] = [];
  for (const { user, pass } of users) {
    // distribution only accepts bcrypt entries, hence -B.
    const { stdout } = await runCommand('htpasswd', ['-Bbn', user, pass], { signal, timeoutMs: 20_000 });
    lines.push(stdout.toString('utf8').trim());
  }
  return `${lines.join('\n')}\n`;
}

function registryConfig(rootDir: string, port: number, htpasswdPath: string | undefined, tls: TlsFiles | undefined): unknown {
  // JSON is valid YAML, so no YAML writer is needed.
  return {
    version: '0.1',
    log: { level: 'info', formatter: 'text', accesslog: { disabled: false } },
    storage: {
      filesystem: { rootdirectory: join(rootDir, 'data') },
      delete: { enabled: true },
      // Upload purging is a background sweep; tests never leave uploads long enough to need it.
      maintenance: { uploadpurging: { enabled: false } },
    },
    http: { addr: `127.0.0.1:${port}`, secret: 'registry-cache-e2e', ...(tls ? { tls } : {}) },
    ...(htpasswdPath === undefined ? {} : { auth: { htpasswd: { realm: 'registry-cache-e2e', path: htpasswdPath } } }),
  };
}
