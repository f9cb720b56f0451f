import { copyFile, mkdir, readdir, rename, rm, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Config } from './config/load.js';

/** containerd's default hosts directory. */
export const DEFAULT_CERTS_DIR = '/etc/containerd/certs.d';
const FILE = 'hosts.toml';
const BACKUP = 'hosts.toml.registry-cache-backup';
/** Marks a hosts.toml that registry-cache created where there was none, so restore removes it. */
const CREATED = '.registry-cache-created';

/** What `hosts` did for one registry. */
export interface HostsChange {
  registry: string;
  file: string;
  action: 'written' | 'written (original backed up)' | 'restored' | 'removed' | 'unchanged';
}

/** The mirror URL containerd should use: the cache's listen address (a wildcard bind means loopback). */
export function mirrorUrl(config: Config): string {
  const host = config.listen.host === '0.0.0.0' || config.listen.host === '::' ? '127.0.0.1' : config.listen.host;
  return `http://${host.includes(':') ? `[${host}]` : host}:${config.listen.port}`;
}

/** The hosts.toml for one registry: the cache first (pull and resolve), the real registry as `server` fallback. */
export function hostsToml(serverUrl: string, mirror: string): string {
  return [
    '# Written by registry-cache: pulls go through the node-local cache; containerd falls back to `server`',
    '# if the cache is down. `registry-cache hosts --restore` puts back what was here before.',
    `server = "${serverUrl.replace(/\/$/, '')}"`,
    '',
    `[host."${mirror}"]`,
    '  capabilities = ["pull", "resolve"]',
    '',
  ].join('\n');
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Writes one hosts.toml per configured registry, keeping the first original it replaces as a backup. */
export async function writeHosts(config: Config, certsDir: string, mirror = mirrorUrl(config)): Promise<HostsChange[]> {
  const changes: HostsChange[] = [];
  for (const [registry, reg] of config.registries) {
    const dir = join(certsDir, registry);
    const file = join(dir, FILE);
    await mkdir(dir, { recursive: true });
    const hadOriginal = (await exists(file)) && !(await exists(join(dir, CREATED))) && !(await exists(join(dir, BACKUP)));
    if (hadOriginal) await copyFile(file, join(dir, BACKUP));
    else if (!(await exists(file)) && !(await exists(join(dir, BACKUP)))) await writeFile(join(dir, CREATED), '');
    // Write beside, then rename: containerd may read the file at any moment.
    await writeFile(`${file}.tmp`, hostsToml(reg.url.href, mirror));
    await rename(`${file}.tmp`, file);
    changes.push({ registry, file, action: hadOriginal ? 'written (original backed up)' : 'written' });
  }
  return changes;
}

/** Puts back every original hosts.toml byte for byte, and removes the ones registry-cache created. */
export async function restoreHosts(config: Config, certsDir: string): Promise<HostsChange[]> {
  const changes: HostsChange[] = [];
  for (const registry of config.registries.keys()) {
    const dir = join(certsDir, registry);
    const file = join(dir, FILE);
    if (await exists(join(dir, BACKUP))) {
      await rename(join(dir, BACKUP), file);
      changes.push({ registry, file, action: 'restored' });
    } else if (await exists(join(dir, CREATED))) {
      await rm(file, { force: true });
      await rm(join(dir, CREATED), { force: true });
      if ((await readdir(dir)).length === 0) await rmdir(dir);
      changes.push({ registry, file, action: 'removed' });
    } else {
      changes.push({ registry, file, action: 'unchanged' });
    }
  }
  return changes;
}
