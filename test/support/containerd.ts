import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { runCommand, type CommandOptions } from './command.js';
import { startDaemon, waitUntil } from './daemon.js';
import type { Credentials } from './registry-client.js';
import { makeTempDir, removeTempDir } from './temp-dir.js';

/** Snapshotters that work on this machine; overlayfs is what real nodes use. */
export type Snapshotter = 'overlayfs' | 'native';

/** Options for startContainerd. */
export interface ContainerdOptions {
  /** Defaults to overlayfs. */
  snapshotter?: Snapshotter;
  /** The namespace ctr uses unless a call names another; defaults to `e2e`. */
  namespace?: string;
  signal?: AbortSignal;
}

/** Options for one ctr run. */
export interface CtrOptions {
  /** Defaults to the daemon's namespace. */
  namespace?: string;
  /** Defaults to 60 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Options for ContainerdDaemon.pull. */
export interface CtrPullOptions extends CtrOptions {
  /** A certs.d-style directory holding `<registry-host>/hosts.toml` (see writeHostsToml). */
  hostsDir: string;
  /** Passed as `--user user:pass`; ctr sends it only after a 401 challenge. */
  user?: Credentials;
  /** Fetch and unpack every platform of an index, not just the host's. */
  allPlatforms?: boolean;
  /** Use `ctr content fetch` (no unpacking) instead of `ctr images pull`. */
  fetchOnly?: boolean;
  /** Default scheme for hosts without one; defaults to true (everything here is plain HTTP). */
  plainHttp?: boolean;
  /** More flags before the ref, e.g. `--platform linux/arm64` or `--http-dump`. */
  extraArgs?: string[];
}

/** One row of `ctr images check`. */
export interface ImageCheck {
  ref: string;
  mediaType: string;
  digest: string;
  /** `complete`, `incomplete` or `unavailable` as ctr prints it. */
  status: string;
  complete: boolean;
  /** Content blobs present / needed, from the `(n/m)` after the status. */
  present: number;
  total: number;
  unpacked: boolean;
}

/** A private containerd daemon with its own root, state and socket. */
export interface ContainerdDaemon {
  /** The gRPC socket path, for `ctr --address`. */
  address: string;
  rootDir: string;
  logFile: string;
  namespace: string;
  snapshotter: Snapshotter;
  /** Runs `ctr --address … -n … args`, throwing with stderr on failure. */
  ctr(args: string[], opts?: CtrOptions): Promise<{ stdout: string; stderr: string }>;
  /** Pulls `ref` through the hosts.toml in `hostsDir`; returns ctr's output. */
  pull(ref: string, opts: CtrPullOptions): Promise<{ stdout: string; stderr: string }>;
  /** Runs `ctr images check` for exactly `ref`; throws if containerd does not know the image. */
  check(ref: string, opts?: CtrOptions): Promise<ImageCheck>;
  readLog(): Promise<string>;
  /** Stops the daemon by PID (SIGTERM, then SIGKILL), unmounts anything left under rootDir and deletes it. */
  stop(): Promise<void>;
}

/** One mirror (or the upstream itself) in a hosts.toml. */
export interface HostsTomlMirror {
  /** Scheme, host and optional path, e.g. `http://127.0.0.1:5000`. */
  url: string;
  /** Defaults to pull and resolve. */
  capabilities?: Array<'pull' | 'resolve' | 'push'>;
  /** Use the url's path as-is instead of appending `/v2`. */
  overridePath?: boolean;
  /** Extra headers containerd sends to this host. */
  header?: Record<string, string>;
}

/** The content of one hosts.toml. */
export interface HostsTomlSpec {
  /** The registry itself, tried last; use `http://127.0.0.1:9` (dead) to prove the mirrors served everything. */
  server: string;
  mirrors: HostsTomlMirror[];
}

/** Dead on purpose: nothing listens on the discard port, so a fallback to `server` fails loudly. */
export const DEAD_SERVER = 'http://127.0.0.1:9';

const CHECK_ROW = /^(\S+)\s+(\S+)\s+(sha256:[0-9a-f]{64})\s+(\S+) \((\d+)\/(\d+)\)\s+.*\s(true|false)$/;

/** Starts containerd (config version 2, CRI disabled) in a temp dir and resolves once its socket answers. */
export async function startContainerd(opts: ContainerdOptions = {}): Promise<ContainerdDaemon> {
  const snapshotter = opts.snapshotter ?? 'overlayfs';
  const namespace = opts.namespace ?? 'e2e';
  // mkdtemp under /tmp keeps the socket path far below the 108-byte sun_path limit.
  const rootDir = await makeTempDir('rc-ctrd-');
  const address = join(rootDir, 'containerd.sock');
  const configPath = join(rootDir, 'config.toml');
  const logFile = join(rootDir, 'containerd.log');
  try {
    await mkdir(join(rootDir, 'opt'));
    await writeFile(configPath, containerdConfig(rootDir, address));
    const daemon = await startDaemon('containerd', ['--config', configPath], logFile);
    const ctrRun = async (args: string[], o: CtrOptions = {}): Promise<{ stdout: string; stderr: string }> => {
      const commandOpts: CommandOptions = { timeoutMs: o.timeoutMs ?? 60_000, signal: o.signal };
      const res = await runCommand('ctr', ['--address', address, '--namespace', o.namespace ?? namespace, ...args], commandOpts);
      return { stdout: res.stdout.toString('utf8'), stderr: res.stderr };
    };
    const stop = async (): Promise<void> => {
      await daemon.stop(10_000);
      await unmountUnder(rootDir);
      await removeTempDir(rootDir);
    };
    try {
      await waitUntil(
        `containerd at ${address}`,
        async () => (await canConnect(address)) && (await ctrRun(['version'], { timeoutMs: 5_000 }).then(() => true)),
        { daemon, signal: opts.signal, intervalMs: 100 },
      );
    } catch (error) {
      await stop();
      throw error;
    }
    return {
      address,
      rootDir,
      logFile,
      namespace,
      snapshotter,
      ctr: ctrRun,
      async pull(ref, o) {
        const args = o.fetchOnly ? ['content', 'fetch'] : ['images', 'pull', '--snapshotter', snapshotter];
        args.push('--hosts-dir', o.hostsDir);
        if (o.plainHttp ?? true) args.push('--plain-http');
        if (o.allPlatforms) args.push('--all-platforms');
        if (o.user !== undefined) args.push('--user', `${o.user.user}:${o.user.pass}`);
        return ctrRun([...args, ...(o.extraArgs ?? []), ref], o);
      },
      async check(ref, o) {
        // Without --snapshotter, check reports UNPACKED for the default (overlayfs) even when native was used.
        const { stdout } = await ctrRun(['images', 'check', '--snapshotter', snapshotter, `name==${ref}`], o);
        return parseImageCheck(stdout, ref);
      },
      readLog: () => daemon.readLog(),
      stop,
    };
  } catch (error) {
    await unmountUnder(rootDir);
    await removeTempDir(rootDir);
    throw error;
  }
}

/** Parses `ctr images check` output and returns the row for `ref`. */
export function parseImageCheck(stdout: string, ref: string): ImageCheck {
  for (const line of stdout.split('\n')) {
    const m = CHECK_ROW.exec(line.trim());
    if (m === null || m[1] !== ref) continue;
    const [, rowRef, mediaType, digest, status, present, total, unpacked] = m;
    if (rowRef === undefined || mediaType === undefined || digest === undefined || status === undefined) continue;
    return {
      ref: rowRef,
      mediaType,
      digest,
      status,
      complete: status === 'complete',
      present: Number(present),
      total: Number(total),
      unpacked: unpacked === 'true',
    };
  }
  throw new Error(`ctr images check has no row for ${ref}:\n${stdout}`);
}

/** Writes `certsDir/<registryHost>/hosts.toml` in containerd's hosts format and returns its path. */
export async function writeHostsToml(certsDir: string, registryHost: string, spec: HostsTomlSpec): Promise<string> {
  // A host with a port (127.0.0.1:5000) is used verbatim as the directory name; that is what containerd 1.6 looks up.
  const dir = join(certsDir, registryHost);
  await mkdir(dir, { recursive: true });
  const lines = [`server = ${tomlString(spec.server)}`, ''];
  for (const m of spec.mirrors) {
    lines.push(`[host.${tomlString(m.url)}]`);
    lines.push(`  capabilities = [${(m.capabilities ?? ['pull', 'resolve']).map(tomlString).join(', ')}]`);
    if (m.overridePath) lines.push('  override_path = true');
    if (m.header !== undefined) {
      lines.push(`  [host.${tomlString(m.url)}.header]`);
      for (const [name, value] of Object.entries(m.header)) lines.push(`    ${tomlString(name)} = ${tomlString(value)}`);
    }
    lines.push('');
  }
  const file = join(dir, 'hosts.toml');
  await writeFile(file, lines.join('\n'));
  return file;
}

function containerdConfig(rootDir: string, address: string): string {
  return [
    'version = 2',
    `root = ${tomlString(join(rootDir, 'root'))}`,
    `state = ${tomlString(join(rootDir, 'state'))}`,
    // CRI would want a CNI setup and a kubelet; the e2e tests only need images and content.
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
    '',
    '[grpc]',
    `  address = ${tomlString(address)}`,
    '',
    '[ttrpc]',
    `  address = ${tomlString(`${address}.ttrpc`)}`,
    '',
    '[debug]',
    '  level = "info"',
    '',
    // The opt plugin otherwise creates /opt/containerd on the host.
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${tomlString(join(rootDir, 'opt'))}`,
    '',
  ].join('\n');
}

async function canConnect(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(socketPath);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Unmounts (lazily, deepest first) every mount below `dir`, e.g. overlay snapshots an unpack left behind. */
async function unmountUnder(dir: string): Promise<void> {
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const points = mountinfo
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined && p.startsWith(`${dir}/`))
    .map((p) => p.replace(/\\040/g, ' '))
    .sort((a, b) => b.length - a.length);
  for (const point of points) {
    await runCommand('umount', ['-l', point], { timeoutMs: 10_000 }).catch(() => undefined);
  }
}

function tomlString(value: string): string {
  return JSON.stringify(value);
}
