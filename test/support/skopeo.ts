import { writeFile } from 'node:fs/promises';
import { runCommand, type CommandOptions } from './command.js';
import type { Credentials } from './registry-client.js';

/** Options for one skopeo run. */
export interface SkopeoOptions {
  /** Defaults to 60 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Passed as the hidden global `--registries-conf` flag, the only way skopeo 1.9 honours a custom file. */
  registriesConf?: string;
  env?: Record<string, string>;
}

/** Options for skopeoCopyToRegistry. */
export interface SkopeoCopyOptions extends SkopeoOptions {
  creds?: Credentials;
  /** Copy every image of an index (`--all`); defaults to true so indexes stay byte-identical. */
  all?: boolean;
}

/** One `[[registry]]` table of a registries.conf. */
export interface RegistryMirrorEntry {
  /** The registry (optionally with a namespace) the rule applies to, e.g. `docker.io` or `127.0.0.1:5000`. */
  prefix: string;
  /** Where the registry really lives; use a dead `127.0.0.1:9` to prove the mirror served everything. */
  location: string;
  /** Mirrors tried first, in order, e.g. `127.0.0.1:PORT` or `127.0.0.1:PORT/docker.io`. */
  mirrors: string[];
  /** Whether plain HTTP is allowed; defaults to true (everything here is on loopback). */
  insecure?: boolean;
}

/** Runs `skopeo args` and returns its stdout bytes, throwing with stderr on failure or timeout. */
export async function skopeoRaw(args: string[], opts: SkopeoOptions = {}): Promise<Buffer> {
  // --insecure-policy: signature policy is not under test, and CI images may lack /etc/containers/policy.json.
  const global = ['--insecure-policy', ...(opts.registriesConf === undefined ? [] : ['--registries-conf', opts.registriesConf])];
  const commandOpts: CommandOptions = { timeoutMs: opts.timeoutMs ?? 60_000, signal: opts.signal, env: opts.env };
  return (await runCommand('skopeo', [...global, ...args], commandOpts)).stdout;
}

/** Runs `skopeo args` and returns its stdout as text, throwing with stderr on failure or timeout. */
export async function skopeo(args: string[], opts: SkopeoOptions = {}): Promise<string> {
  return (await skopeoRaw(args, opts)).toString('utf8');
}

/**
 * Pushes `oci:ociDir:tag` to `docker://dest` over plain HTTP with `--preserve-digests`, so skopeo fails rather than
 * silently rewriting a manifest. `dest` is `host/repo:tag`.
 */
export async function skopeoCopyToRegistry(ociDir: string, tag: string, dest: string, opts: SkopeoCopyOptions = {}): Promise<void> {
  await skopeoCopy(`oci:${ociDir}:${tag}`, `docker://${dest}`, opts);
}

/** Pushes a skopeo `dir:` directory (see writeDirTransport) to `docker://dest`; the route for Docker media types. */
export async function skopeoCopyDirToRegistry(dir: string, dest: string, opts: SkopeoCopyOptions = {}): Promise<void> {
  await skopeoCopy(`dir:${dir}`, `docker://${dest}`, opts);
}

/** Copies `docker://src` (`host/repo:tag` or `host/repo@digest`) into an OCI layout as `oci:ociDir:tag`. */
export async function skopeoCopyFromRegistry(src: string, ociDir: string, tag: string, opts: SkopeoCopyOptions = {}): Promise<void> {
  await skopeoCopy(`docker://${src}`, `oci:${ociDir}:${tag}`, opts);
}

async function skopeoCopy(src: string, dest: string, opts: SkopeoCopyOptions): Promise<void> {
  const srcIsRegistry = src.startsWith('docker://');
  const destIsRegistry = dest.startsWith('docker://');
  const args = ['copy', '--quiet', '--preserve-digests'];
  if (opts.all ?? true) args.push('--all');
  if (srcIsRegistry) args.push('--src-tls-verify=false');
  if (destIsRegistry) args.push('--dest-tls-verify=false');
  if (opts.creds !== undefined) {
    const flag = destIsRegistry ? '--dest-creds' : '--src-creds';
    args.push(flag, `${opts.creds.user}:${opts.creds.pass}`);
  }
  await skopeo([...args, src, dest], opts);
}

/**
 * Returns the manifest bytes skopeo receives for `ref` (e.g. `docker://127.0.0.1:5000/a:v1`), unmodified;
 * `extraArgs` go before the ref (e.g. `--authfile`, `--creds`). TLS verification is off.
 */
export async function skopeoInspectRaw(ref: string, extraArgs: string[] = [], opts: SkopeoOptions = {}): Promise<Buffer> {
  return skopeoRaw(['inspect', '--raw', '--tls-verify=false', ...extraArgs, ref], opts);
}

/** Writes a registries.conf (v2 TOML) that sends `prefix` to its mirrors first; pass it via SkopeoOptions.registriesConf. */
export async function writeRegistriesConf(file: string, entries: RegistryMirrorEntry[]): Promise<void> {
  const blocks = entries.map((e) => {
    const insecure = e.insecure ?? true;
    const mirrors = e.mirrors.map((m) => `\n[[registry.mirror]]\nlocation = ${tomlString(m)}\ninsecure = ${insecure}\n`);
    return `[[registry]]\nprefix = ${tomlString(e.prefix)}\nlocation = ${tomlString(e.location)}\ninsecure = ${insecure}\n${mirrors.join('')}`;
  });
  await writeFile(file, blocks.join('\n'));
}

/** Writes a containers auth.json keyed by host; skopeo sends mirror credentials only from such a file (`--authfile`). */
export async function writeAuthFile(file: string, auths: Record<string, Credentials>): Promise<void> {
  const json: Record<string, { auth: string }> = {};
  for (const [host, c] of Object.entries(auths)) json[host] = { auth: Buffer.from(`${c.user}:${c.pass}`).toString('base64') };
  await writeFile(file, JSON.stringify({ auths: json }, null, 2), { mode: 0o600 });
}

/** TOML basic strings share JSON's escapes for everything a host or path contains. */
function tomlString(value: string): string {
  return JSON.stringify(value);
}
