import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { parse as parseYaml } from 'yaml';
import { parseDuration } from '../config/duration.js';
import type { Credential } from '../upstream/credentials.js';
import { keyMatchesImage } from './image-match.js';

/** Kubelet's timeout for one credential provider exec. */
const PLUGIN_TIMEOUT_MS = 60_000;
const MAX_PLUGIN_OUTPUT = 1024 * 1024;
/**
 * Plugin processes allowed at once. Clients choose repository names, and each name a plugin caches per image costs an
 * exec: without a bound, one client's burst of made-up names is a burst of processes (and of calls to the cloud API
 * behind the plugin). Further execs wait their turn.
 */
const MAX_CONCURRENT_EXECS = 4;

/** A node-wide credential and where it came from (for logs; never the secret). */
export interface NodeCredential {
  credential: Credential;
  source: string;
}

interface DockerConfigEntry {
  key: string;
  credential: Credential;
}

/** Parses a Docker `config.json` (`auths` with `auth` or username/password); bad entries are a startup error. */
export function parseDockerConfig(text: string, file: string): DockerConfigEntry[] {
  let json: { auths?: Record<string, { auth?: unknown; username?: unknown; password?: unknown }> };
  try {
    json = JSON.parse(text) as typeof json;
  } catch {
    throw new Error(`${file}: not valid JSON`);
  }
  const out: DockerConfigEntry[] = [];
  for (const [key, entry] of Object.entries(json.auths ?? {})) {
    let username = typeof entry.username === 'string' ? entry.username : undefined;
    let password = typeof entry.password === 'string' ? entry.password : undefined;
    if (typeof entry.auth === 'string' && entry.auth !== '') {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const i = decoded.indexOf(':');
      if (i < 0) throw new Error(`${file}: auths["${key}"].auth is not base64(user:password)`);
      username = decoded.slice(0, i);
      password = decoded.slice(i + 1);
    }
    if (username === undefined || password === undefined) continue;
    out.push({ key, credential: { username, password } });
  }
  // The kubelet tries keys in reverse lexical order, so longer (more specific) paths of one host come first.
  return out.sort((a, b) => (a.key < b.key ? 1 : a.key > b.key ? -1 : 0));
}

/** One `providers[]` entry of a kubelet CredentialProviderConfig. */
export interface CredentialProviderSpec {
  name: string;
  matchImages: string[];
  defaultCacheDuration: number;
  apiVersion: string;
  args: string[];
  env: { name: string; value: string }[];
}

const PROVIDER_API_VERSIONS = new Set(['credentialprovider.kubelet.k8s.io/v1', 'credentialprovider.kubelet.k8s.io/v1beta1', 'credentialprovider.kubelet.k8s.io/v1alpha1']);

/** Parses a `CredentialProviderConfig` (kubelet.config.k8s.io/v1), YAML or JSON. */
export function parseCredentialProviderConfig(text: string, file: string): CredentialProviderSpec[] {
  const doc = parseYaml(text) as { kind?: unknown; apiVersion?: unknown; providers?: unknown } | null;
  if (!doc || doc.kind !== 'CredentialProviderConfig') throw new Error(`${file}: kind must be CredentialProviderConfig`);
  if (!Array.isArray(doc.providers)) throw new Error(`${file}: providers must be a list`);
  return doc.providers.map((p: Record<string, unknown>, i: number) => {
    const where = `${file}: providers[${i}]`;
    if (typeof p.name !== 'string' || p.name === '' || p.name.includes('/') || p.name === '.' || p.name === '..') {
      throw new Error(`${where}.name must be a plain executable name`);
    }
    if (!Array.isArray(p.matchImages) || p.matchImages.length === 0) throw new Error(`${where}.matchImages must be a non-empty list`);
    const cache = typeof p.defaultCacheDuration === 'string' ? parseDuration(p.defaultCacheDuration) : undefined;
    if (cache === undefined) throw new Error(`${where}.defaultCacheDuration must be a duration`);
    if (typeof p.apiVersion !== 'string' || !PROVIDER_API_VERSIONS.has(p.apiVersion)) throw new Error(`${where}.apiVersion is not a credentialprovider.kubelet.k8s.io version`);
    return {
      name: p.name,
      matchImages: p.matchImages.map(String),
      defaultCacheDuration: cache,
      apiVersion: p.apiVersion,
      args: Array.isArray(p.args) ? p.args.map(String) : [],
      env: Array.isArray(p.env) ? (p.env as { name: unknown; value: unknown }[]).map((e) => ({ name: String(e.name), value: String(e.value) })) : [],
    };
  });
}

interface CachedAuth {
  expiresAt: number;
  auth: DockerConfigEntry[];
}

/**
 * Node-wide credentials for an image: the registry's configured ones, then `config.json` matches, then kubelet
 * credential provider plugins. A pull that succeeds with any of them is `nodePodsAccessible`, as in the kubelet.
 */
export class NodeCredentials {
  private readonly cache = new Map<string, CachedAuth>();
  /** Execs under way per (plugin, image): concurrent lookups of one image share one process, as in the kubelet. */
  private readonly inflight = new Map<string, Promise<DockerConfigEntry[]>>();
  private running = 0;
  private readonly queue: (() => void)[] = [];

  private constructor(
    private readonly dockerConfig: DockerConfigEntry[],
    private readonly providers: CredentialProviderSpec[],
    private readonly binDir: string | undefined,
    private readonly log: Logger,
  ) {}

  /** Loads the configured files; any problem stops startup with the file named. */
  static async load(options: { dockerConfig?: string; providerConfig?: string; providerBinDir?: string; log: Logger }): Promise<NodeCredentials> {
    const docker = options.dockerConfig ? parseDockerConfig(await readFile(options.dockerConfig, 'utf8'), options.dockerConfig) : [];
    const providers = options.providerConfig ? parseCredentialProviderConfig(await readFile(options.providerConfig, 'utf8'), options.providerConfig) : [];
    if (providers.length > 0 && !options.providerBinDir) throw new Error('credentialProviderBinDir is required with credentialProviderConfig');
    return new NodeCredentials(docker, providers, options.providerBinDir, options.log);
  }

  /** An empty set (no node-wide credentials). */
  static none(log: Logger): NodeCredentials {
    return new NodeCredentials([], [], undefined, log);
  }

  /** Node-wide credentials matching `registry/repository`, in the order they are tried. */
  async lookup(image: string, signal?: AbortSignal): Promise<NodeCredential[]> {
    const out: NodeCredential[] = [];
    for (const e of this.dockerConfig) if (keyMatchesImage(e.key, image)) out.push({ credential: e.credential, source: `config.json:${e.key}` });
    for (const p of this.providers) {
      if (!p.matchImages.some((m) => keyMatchesImage(m, image))) continue;
      try {
        const auth = await this.providerAuth(p, image, signal);
        for (const e of auth) if (keyMatchesImage(e.key, image)) out.push({ credential: e.credential, source: `provider:${p.name}` });
      } catch (err) {
        this.log.warn({ provider: p.name, image, err: { message: (err as Error).message } }, 'credential provider failed');
      }
    }
    return out;
  }

  /** Cached plugin answers (live ones; expired ones are swept whenever an answer is added). */
  get cachedAnswers(): number {
    return this.cache.size;
  }

  private async providerAuth(p: CredentialProviderSpec, image: string, signal?: AbortSignal): Promise<DockerConfigEntry[]> {
    const hit = this.cached(p, image);
    if (hit) return hit;
    const key = `${p.name}\n${image}`;
    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.execInTurn(p, image, signal).finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    return pending;
  }

  /** The cached answer for an image under any of the plugin's cache keys, if live. */
  private cached(p: CredentialProviderSpec, image: string): DockerConfigEntry[] | undefined {
    const registry = image.split('/')[0] ?? '';
    for (const key of [`image:${p.name}:${image}`, `registry:${p.name}:${registry}`, `global:${p.name}`]) {
      const hit = this.cache.get(key);
      if (hit && hit.expiresAt > Date.now()) return hit.auth;
    }
    return undefined;
  }

  /** Runs the plugin once a slot is free; an answer cached meanwhile (a Registry or Global key) spares the exec. */
  private async execInTurn(p: CredentialProviderSpec, image: string, signal?: AbortSignal): Promise<DockerConfigEntry[]> {
    // A finishing exec hands its slot straight to the next in line, so a newcomer cannot slip in between.
    if (this.running >= MAX_CONCURRENT_EXECS) await new Promise<void>((resolve) => this.queue.push(resolve));
    else this.running++;
    try {
      return this.cached(p, image) ?? (await this.execAndCache(p, image, signal));
    } finally {
      const next = this.queue.shift();
      if (next) next();
      else this.running--;
    }
  }

  private async execAndCache(p: CredentialProviderSpec, image: string, signal?: AbortSignal): Promise<DockerConfigEntry[]> {
    const registry = image.split('/')[0] ?? '';
    const response = await this.exec(p, image, signal);
    const auth: DockerConfigEntry[] = [];
    for (const [key, v] of Object.entries(response.auth ?? {})) {
      if (typeof v?.username === 'string' && typeof v.password === 'string') auth.push({ key, credential: { username: v.username, password: v.password } });
    }
    auth.sort((a, b) => (a.key < b.key ? 1 : a.key > b.key ? -1 : 0));
    const duration = typeof response.cacheDuration === 'string' ? (parseDuration(response.cacheDuration) ?? p.defaultCacheDuration) : p.defaultCacheDuration;
    if (duration > 0) {
      const type = response.cacheKeyType;
      const key = type === 'Registry' ? `registry:${p.name}:${registry}` : type === 'Global' ? `global:${p.name}` : `image:${p.name}:${image}`;
      // Image keys are client-chosen names: expired answers must not pile up. The sweep costs less than the exec.
      const now = Date.now();
      for (const [k, cached] of this.cache) if (cached.expiresAt <= now) this.cache.delete(k);
      this.cache.set(key, { expiresAt: now + duration, auth });
    }
    return auth;
  }

  private exec(
    p: CredentialProviderSpec,
    image: string,
    signal?: AbortSignal,
  ): Promise<{ cacheKeyType?: unknown; cacheDuration?: unknown; auth?: Record<string, { username?: unknown; password?: unknown }> }> {
    const request = JSON.stringify({ apiVersion: p.apiVersion, kind: 'CredentialProviderRequest', image });
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', ...Object.fromEntries(p.env.map((e) => [e.name, e.value])) };
    return new Promise((resolve, reject) => {
      const child = execFile(
        join(this.binDir as string, p.name),
        p.args,
        { env, timeout: PLUGIN_TIMEOUT_MS, maxBuffer: MAX_PLUGIN_OUTPUT, ...(signal ? { signal } : {}) },
        (err, stdout) => {
          if (err) return reject(new Error(`exec failed: ${err.message.split('\n')[0]}`));
          try {
            const res = JSON.parse(stdout) as { kind?: unknown; apiVersion?: unknown };
            if (res.kind !== 'CredentialProviderResponse') return reject(new Error('response kind is not CredentialProviderResponse'));
            if (res.apiVersion !== p.apiVersion) return reject(new Error(`response apiVersion ${String(res.apiVersion)} does not match ${p.apiVersion}`));
            resolve(res as never);
          } catch {
            reject(new Error('response is not JSON'));
          }
        },
      );
      child.stdin?.end(request);
    });
  }
}
