import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import type { TSchema } from '@sinclair/typebox';
import { Value, ValueErrorType, type ValueError } from '@sinclair/typebox/value';
import { parse as parseYaml } from 'yaml';
import { canonicalRegistry, parseImageReference } from '../oci/reference.js';
import { Allowlist } from './allowlist.js';
import { parseDuration } from './duration.js';
import { ConfigSchema, DEFAULT_REGISTRIES, type LogLevel, type PeerDiscovery, type RawConfig, type VerificationPolicy } from './schema.js';

/** A configured upstream registry, resolved. */
export interface RegistryConfig {
  host: string;
  url: URL;
  /** Endpoints tried in order before `url`. */
  mirrors: readonly URL[];
  /** How to reach this registry's endpoints: TLS, proxy, timeouts, pool size, static headers. */
  transport: RegistryTransport;
  /** Host names (`*.domain` patterns) and IPs its redirects may lead to on non-public addresses (private CDNs). */
  redirectAllowlist: readonly string[];
  /** Node-wide Basic credentials for this registry, when configured. */
  username?: string;
  password?: string;
}

/** Per-registry connection settings, resolved (PEM files read and parsed). */
export interface RegistryTransport {
  /** Extra trusted CAs (PEM), added to the system roots. */
  ca: string | undefined;
  clientCert: string | undefined;
  clientKey: string | undefined;
  insecureSkipVerify: boolean;
  headers: Readonly<Record<string, string>>;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  idleTimeoutMs: number;
  /** Explicit egress proxy; credentials stay in the URL object and are never logged. */
  proxy: URL | undefined;
  maxSockets: number;
}

/** The validated, frozen configuration the process runs on. */
export interface Config {
  listen: { host: string; port: number };
  /** Separate address for /metrics and probes, when set. */
  metricsListen: { host: string; port: number } | undefined;
  storage: string;
  defaultRegistry: string;
  registries: ReadonlyMap<string, RegistryConfig>;
  tagTtlMs: number;
  logLevel: LogLevel;
  fillTimeoutMs: number;
  imagePullCredentialsVerificationPolicy: VerificationPolicy;
  preloadedImagesVerificationAllowlist: Allowlist;
  nodeDockerConfig: string | undefined;
  credentialProviderConfig: string | undefined;
  credentialProviderBinDir: string | undefined;
  tokenTtlMs: number;
  eviction: EvictionSettings;
  gcIntervalMs: number;
  shutdownTimeoutMs: number;
  /** Images transferring at once; undefined means no limit. */
  maxParallelImagePulls: number | undefined;
  pullQueueTimeoutMs: number;
  pullLingerMs: number;
  upstreamBandwidthLimit: number | undefined;
  /** Sharing blobs between nodes; undefined when it is off (no `peers`, no Kubernetes discovery). */
  peers: PeerSettings | undefined;
}

/** Kubelet-style image garbage collection settings. */
export interface EvictionSettings {
  highThresholdPercent: number;
  lowThresholdPercent: number;
  maxStorageBytes: number | undefined;
  /** Image references never evicted (tag or digest), e.g. the pause image. */
  pinnedImages: readonly string[];
}

/** Resolved peer-sharing settings. */
export interface PeerSettings {
  /** Where this node's peer listener binds. */
  listen: { host: string; port: number };
  /** Static members (`host:port`), empty with Kubernetes discovery. */
  members: readonly string[];
  discovery: PeerDiscovery;
  /** Kubernetes discovery: the headless Service and its peer port name. */
  service: string | undefined;
  portName: string;
  /** The shared secret's bytes (read from `peerSecret` at start). */
  secret: Buffer;
  connectTimeoutMs: number;
  answerTimeoutMs: number;
  idleTimeoutMs: number;
  sharePrivateLayers: boolean;
}

/** One invalid key and what is wrong with it. */
export interface ConfigProblem {
  key: string;
  message: string;
}

/** Configuration problems, reported at startup all at once, each with the key that caused it. */
export class ConfigError extends Error {
  /** Every problem found; `key` is the first one's. */
  readonly problems: readonly ConfigProblem[];
  readonly key: string;

  constructor(key: string, message: string);
  constructor(problems: readonly ConfigProblem[]);
  constructor(keyOrProblems: string | readonly ConfigProblem[], message?: string) {
    const problems = typeof keyOrProblems === 'string' ? [{ key: keyOrProblems, message: message ?? '' }] : keyOrProblems;
    super(
      problems.length === 1
        ? `invalid configuration: ${problems[0]?.key}: ${problems[0]?.message}`
        : `invalid configuration (${problems.length} problems):\n${problems.map((p) => `  ${p.key}: ${p.message}`).join('\n')}`,
    );
    this.name = 'ConfigError';
    this.problems = problems;
    this.key = problems[0]?.key ?? '(root)';
  }
}

/** Collects ConfigErrors so that every problem is reported at once. */
class Problems {
  readonly list: ConfigProblem[] = [];

  add(key: string, message: string): void {
    this.list.push({ key, message });
  }

  /** The value of `fn`, or `fallback` with its problems noted. */
  check<T>(fn: () => T, fallback: T): T {
    try {
      return fn();
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      this.list.push(...err.problems);
      return fallback;
    }
  }

  throwIfAny(): void {
    if (this.list.length > 0) throw new ConfigError(this.list);
  }
}

const ENV_PREFIX = 'REGISTRY_CACHE_';

/** A `redirectAllowlist` entry: a host name, or `*.` and a domain (any name below it); IP addresses are checked apart. */
const REDIRECT_ALLOWLIST_ENTRY = /^(?:\*\.)?[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$/;

/** `tagTtl` → `REGISTRY_CACHE_TAG_TTL`. */
export function envNameFor(key: string): string {
  return ENV_PREFIX + key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
}

/**
 * Loads config. Precedence, highest first: `overrides` (tests), the YAML file, `REGISTRY_CACHE_*` env vars (values
 * parsed as YAML, so `REGISTRY_CACHE_REGISTRIES='{"ghcr.io": {url: "https://ghcr.io"}}'` works), built-in defaults.
 * The file wins over the environment: it is what an operator wrote for this deployment, while variables also come
 * from images and wrappers (an image's `REGISTRY_CACHE_LISTEN=0.0.0.0:5000` must not silently undo a file's
 * `listen: 127.0.0.1:5000`). A variable the file overrides is reported through `onWarning`. Throws ConfigError.
 */
export function loadConfig(
  options: { file?: string; env?: NodeJS.ProcessEnv; overrides?: Record<string, unknown>; onWarning?: (message: string) => void } = {},
): Config {
  const env = options.env ?? process.env;
  let fromFile: Record<string, unknown> = {};
  if (options.file !== undefined) {
    let text: string;
    try {
      text = readFileSync(options.file, 'utf8');
    } catch (err) {
      throw new ConfigError('--config', `cannot read ${options.file}: ${(err as Error).message}`);
    }
    let parsed: unknown;
    try {
      parsed = parseYaml(text);
    } catch (err) {
      throw new ConfigError('--config', `${options.file} is not valid YAML: ${(err as Error).message}`);
    }
    if (parsed !== null && parsed !== undefined) {
      if (typeof parsed !== 'object' || Array.isArray(parsed)) throw new ConfigError('--config', `${options.file} must hold a mapping`);
      fromFile = parsed as Record<string, unknown>;
    }
  }
  const problems = new Problems();
  const knownKeys = Object.keys(ConfigSchema.properties);
  const fromEnv: Record<string, unknown> = {};
  for (const key of knownKeys) {
    const value = env[envNameFor(key)];
    // An empty variable is unset (YAML would read it as null, which some keys give a meaning).
    if (value === undefined || value.trim() === '') continue;
    try {
      fromEnv[key] = parseYaml(value);
    } catch {
      problems.add(key, `${envNameFor(key)} is not valid YAML`);
    }
  }
  for (const name of Object.keys(env)) {
    if (name.startsWith(ENV_PREFIX) && !knownKeys.some((k) => envNameFor(k) === name)) {
      problems.add(name, 'unknown environment variable');
    }
  }
  const unknownOrBadEnv = problems.list.length;
  for (const key of Object.keys(fromEnv)) {
    if (key in fromFile) options.onWarning?.(`${envNameFor(key)} is ignored: the configuration file sets ${key}, and the file wins`);
  }
  const merged: Record<string, unknown> = { ...fromEnv, ...fromFile, ...(options.overrides ?? {}) };
  // `maxParallelImagePulls: null` is the kubelet's "no limit" (a nil pointer); every other null means "unset".
  // The kubelet's rule: serializeImagePulls false without a limit means no limit. Only with neither key set does the
  // schema's default limit apply.
  const pullLimit: PullLimit =
    merged.maxParallelImagePulls === null || (merged.serializeImagePulls === false && merged.maxParallelImagePulls === undefined)
      ? 'none'
      : merged.maxParallelImagePulls === undefined
        ? 'default'
        : 'given';
  for (const [k, v] of Object.entries(merged)) if (v === null) delete merged[k];
  merged.registries ??= structuredClone(DEFAULT_REGISTRIES);
  const withDefaults = Value.Default(ConfigSchema, Value.Clone(merged));
  const seen = new Set<string>();
  for (const error of Value.Errors(ConfigSchema, withDefaults)) {
    const key = pointerToKey(error.path) || '(root)';
    // One problem per key: a union reports its own failure and each member's.
    if (seen.has(key)) continue;
    seen.add(key);
    problems.add(key, describeSchemaError(error));
  }
  // Schema problems first (finalize needs the types right); unknown variables are reported with finalize's problems.
  if (problems.list.length > unknownOrBadEnv) problems.throwIfAny();
  return finalize(withDefaults as RawConfig, pullLimit, problems);
}

/** What a schema violation means for the person editing the file: the values or the form the key wants. */
function describeSchemaError(error: ValueError): string {
  if (error.type === ValueErrorType.ObjectAdditionalProperties) return 'unknown key';
  const schema = error.schema as TSchema & { anyOf?: { const?: unknown }[]; description?: string; type?: unknown };
  const literals = schema.anyOf?.map((member) => member.const);
  if (literals && literals.length > 0 && literals.every((l) => typeof l === 'string')) {
    return `${JSON.stringify(error.value)} is not one of: ${literals.join(', ')}`;
  }
  const form = schema.description ?? (schema.anyOf ? schema.anyOf.map((m) => (m as { description?: string }).description).find(Boolean) : undefined);
  if (schema.type === 'string' && typeof error.value !== 'string') {
    const got = typeof error.value === 'number' || typeof error.value === 'boolean' ? `the ${typeof error.value} ${String(error.value)}` : JSON.stringify(error.value) ?? 'nothing';
    // A bare number for a duration is most likely seconds: show how to write that.
    const example = typeof error.value === 'number' && form?.includes('duration') ? ` (e.g. "${error.value}s")` : '';
    return `expected a string, got ${got}${form ? `: ${form}` : ''}${example}`;
  }
  return form ? `${error.message} (${form})` : error.message;
}

function pointerToKey(path: string): string {
  return path
    .split('/')
    .filter(Boolean)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
    .join('.');
}

function parseDurationKey(key: string, value: string): number {
  const ms = parseDuration(value);
  if (ms === undefined) throw new ConfigError(key, `"${value}" is not a duration (examples: 0s, 500ms, 1m30s)`);
  return ms;
}

/** Where `maxParallelImagePulls` comes from: no limit (the kubelet's rules), the schema's default, or the config. */
type PullLimit = 'none' | 'default' | 'given';

/** Resolves the validated file into the running config; every semantic problem is collected, then thrown at once. */
function finalize(raw: RawConfig, pullLimit: PullLimit, problems: Problems): Config {
  const duration = (key: string, value: string): number => problems.check(() => parseDurationKey(key, value), Number.NaN);
  const listen = problems.check(() => parseListen('listen', raw.listen), { host: '', port: 0 });
  const registries = new Map<string, RegistryConfig>();
  for (const [hostKey, reg] of Object.entries(raw.registries)) {
    // Each registry reports its first problem; the others are still checked.
    problems.check(() => {
      const host = canonicalRegistry(hostKey);
      if (!/^[a-z0-9.-]+(?::[0-9]{1,5})?$/.test(host)) throw new ConfigError(`registries.${hostKey}`, 'not a registry host[:port]');
      let url: URL;
      try {
        url = new URL(reg.url);
      } catch {
        throw new ConfigError(`registries.${hostKey}.url`, `"${reg.url}" is not a URL`);
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError(`registries.${hostKey}.url`, 'must be http:// or https://');
      if (url.username || url.password) throw new ConfigError(`registries.${hostKey}.url`, 'put credentials in username/password, not the URL');
      if ((reg.username === undefined) !== (reg.password === undefined)) {
        throw new ConfigError(`registries.${hostKey}`, 'username and password go together');
      }
      const mirrors = (reg.mirrors ?? []).map((m, i) => {
        let mirror: URL;
        try {
          mirror = new URL(m);
        } catch {
          throw new ConfigError(`registries.${hostKey}.mirrors[${i}]`, `"${m}" is not a URL`);
        }
        if (mirror.protocol !== 'http:' && mirror.protocol !== 'https:') throw new ConfigError(`registries.${hostKey}.mirrors[${i}]`, 'must be http:// or https://');
        return mirror;
      });
      const transport = resolveTransport(`registries.${hostKey}`, reg, raw);
      const redirectAllowlist = reg.redirectAllowlist.map((h, i) => {
        const allowed = h.trim().toLowerCase().replace(/^\[|\]$/g, '');
        if (!REDIRECT_ALLOWLIST_ENTRY.test(allowed) && isIP(allowed) === 0) {
          throw new ConfigError(`registries.${hostKey}.redirectAllowlist[${i}]`, `"${h}" is not a host name, *.domain or IP address`);
        }
        return allowed;
      });
      const entry: RegistryConfig = { host, url, mirrors: Object.freeze(mirrors), transport, redirectAllowlist: Object.freeze(redirectAllowlist) };
      if (reg.username !== undefined) entry.username = reg.username;
      if (reg.password !== undefined) entry.password = reg.password;
      registries.set(host, Object.freeze(entry));
    }, undefined);
  }
  let allowlist = Allowlist.parse([]);
  try {
    allowlist = Allowlist.parse(raw.preloadedImagesVerificationAllowlist);
  } catch (err) {
    problems.add('preloadedImagesVerificationAllowlist', (err as Error).message);
  }
  const tokenTtlMs = duration('tokenTtl', raw.tokenTtl);
  if (tokenTtlMs < 10_000 || tokenTtlMs > 3_600_000) problems.add('tokenTtl', 'must be between 10s and 1h (tokens hold credentials in memory)');
  if (raw.imageGCLowThresholdPercent >= raw.imageGCHighThresholdPercent) {
    problems.add('imageGCLowThresholdPercent', `must be lower than imageGCHighThresholdPercent (${raw.imageGCHighThresholdPercent})`);
  }
  // The kubelet's rules: maxParallelImagePulls >= 1, and >= 2 only with serializeImagePulls false.
  if (pullLimit === 'given' && raw.maxParallelImagePulls < 1) {
    problems.add('maxParallelImagePulls', 'must be at least 1');
  }
  if (raw.serializeImagePulls && pullLimit === 'given' && raw.maxParallelImagePulls >= 2) {
    problems.add('serializeImagePulls/maxParallelImagePulls', `maxParallelImagePulls ${raw.maxParallelImagePulls} requires serializeImagePulls: false`);
  }
  if (raw.serializeImagePulls && pullLimit === 'none') {
    problems.add('serializeImagePulls/maxParallelImagePulls', 'no limit (null) requires serializeImagePulls: false');
  }
  const maxParallelImagePulls = raw.serializeImagePulls ? 1 : pullLimit === 'none' ? undefined : raw.maxParallelImagePulls;
  const maxStorageBytes = raw.maxStorageBytes === undefined ? undefined : problems.check(() => parseBytes('maxStorageBytes', raw.maxStorageBytes as number | string), undefined);
  raw.pinnedImages.forEach((ref, i) => {
    try {
      parseImageReference(ref);
    } catch {
      problems.add(`pinnedImages[${i}]`, `"${ref}" is not an image reference`);
    }
  });
  const defaultRegistry = canonicalRegistry(raw.defaultRegistry);
  // A registry whose own entry is invalid was reported already.
  if (!Object.keys(raw.registries).some((k) => canonicalRegistry(k) === defaultRegistry)) problems.add('defaultRegistry', `"${raw.defaultRegistry}" is not one of registries`);
  const metricsListen = raw.metricsListen === undefined ? undefined : problems.check(() => parseListen('metricsListen', raw.metricsListen as string), undefined);
  const tagTtlMs = duration('tagTtl', raw.tagTtl);
  // Only registries' transports read the global upstream timeouts; a bad one is still reported under its own key.
  for (const key of ['upstreamConnectTimeout', 'upstreamHeadersTimeout', 'upstreamBodyTimeout'] as const) duration(key, raw[key]);
  const config: Config = Object.freeze({
    listen,
    metricsListen,
    storage: resolve(raw.storage),
    defaultRegistry,
    registries,
    tagTtlMs,
    logLevel: raw.logLevel,
    fillTimeoutMs: duration('fillTimeout', raw.fillTimeout),
    imagePullCredentialsVerificationPolicy: raw.imagePullCredentialsVerificationPolicy,
    preloadedImagesVerificationAllowlist: allowlist,
    nodeDockerConfig: raw.nodeDockerConfig === undefined ? undefined : resolve(raw.nodeDockerConfig),
    credentialProviderConfig: raw.credentialProviderConfig === undefined ? undefined : resolve(raw.credentialProviderConfig),
    credentialProviderBinDir: raw.credentialProviderBinDir === undefined ? undefined : resolve(raw.credentialProviderBinDir),
    tokenTtlMs,
    eviction: Object.freeze({
      highThresholdPercent: raw.imageGCHighThresholdPercent,
      lowThresholdPercent: raw.imageGCLowThresholdPercent,
      maxStorageBytes,
      pinnedImages: Object.freeze([...raw.pinnedImages]),
    }),
    gcIntervalMs: duration('gcInterval', raw.gcInterval),
    shutdownTimeoutMs: duration('shutdownTimeout', raw.shutdownTimeout),
    maxParallelImagePulls,
    pullQueueTimeoutMs: duration('pullQueueTimeout', raw.pullQueueTimeout),
    pullLingerMs: duration('pullLinger', raw.pullLinger),
    upstreamBandwidthLimit:
      raw.upstreamBandwidthLimit === undefined ? undefined : problems.check(() => parseBytes('upstreamBandwidthLimit', raw.upstreamBandwidthLimit as number | string), undefined),
    peers: resolvePeers(raw, problems, duration),
  });
  problems.throwIfAny();
  return config;
}

/** Minimum length of the peer secret: it is an HMAC key shared by every node. */
const MIN_PEER_SECRET_BYTES = 32;

/**
 * The value deploy/peer-secret.yaml ships with. Long enough to pass the length check, and the same in every copy
 * of the manifests, so a cluster that kept it would sign with a key anyone can read: the server refuses it.
 */
export const PEER_SECRET_PLACEHOLDER = 'REPLACE-ME-with-at-least-32-random-bytes-openssl-rand-base64-48';

/** Peer sharing is on when members are listed or discovered; then it needs a listener and a secret. */
function resolvePeers(raw: RawConfig, problems: Problems, duration: (key: string, value: string) => number): PeerSettings | undefined {
  if (raw.peers.length === 0 && raw.peerDiscovery !== 'kubernetes') {
    for (const key of ['peerListen', 'peerSecret', 'peerService'] as const) {
      if (raw[key] !== undefined) problems.add(key, 'set, but sharing between nodes is off (no peers and peerDiscovery is not kubernetes)');
    }
    return undefined;
  }
  const members = raw.peers;
  members.forEach((m, i) => problems.check(() => parseListen(`peers[${i}]`, m), undefined));
  if (raw.peerDiscovery === 'kubernetes' && raw.peers.length > 0) problems.add('peers', 'peerDiscovery kubernetes finds the members itself: remove peers');
  if (raw.peerDiscovery === 'kubernetes' && raw.peerService === undefined) problems.add('peerService', 'required with peerDiscovery: kubernetes (the headless Service of the DaemonSet)');
  const listen = raw.peerListen === undefined ? undefined : problems.check(() => parseListen('peerListen', raw.peerListen as string), undefined);
  if (raw.peerListen === undefined) problems.add('peerListen', 'required when sharing between nodes is on (host:port of this node\'s peer listener)');
  let secret = Buffer.alloc(0);
  if (raw.peerSecret === undefined) {
    problems.add('peerSecret', 'required when sharing between nodes is on: a file holding the cluster\'s shared secret');
  } else {
    try {
      secret = Buffer.from(readFileSync(resolve(raw.peerSecret), 'utf8').trim(), 'utf8');
      if (secret.length < MIN_PEER_SECRET_BYTES) problems.add('peerSecret', `the secret in ${raw.peerSecret} is ${secret.length} bytes; at least ${MIN_PEER_SECRET_BYTES} are required`);
      else if (secret.equals(Buffer.from(PEER_SECRET_PLACEHOLDER))) {
        problems.add(
          'peerSecret',
          `${raw.peerSecret} holds the placeholder of deploy/peer-secret.yaml, which every copy of the manifests shares: put at least ${MIN_PEER_SECRET_BYTES} random bytes in the Secret registry-cache-peer (e.g. openssl rand -base64 48)`,
        );
      }
    } catch (err) {
      problems.add('peerSecret', `cannot read ${raw.peerSecret}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  return Object.freeze({
    listen: listen ?? { host: '', port: 0 },
    members: Object.freeze([...members]),
    discovery: raw.peerDiscovery,
    service: raw.peerService,
    portName: raw.peerPortName,
    secret,
    connectTimeoutMs: duration('peerConnectTimeout', raw.peerConnectTimeout),
    answerTimeoutMs: duration('peerAnswerTimeout', raw.peerAnswerTimeout),
    idleTimeoutMs: duration('peerIdleTimeout', raw.peerIdleTimeout),
    sharePrivateLayers: raw.peerSharePrivateLayers,
  });
}

function parseListen(key: string, value: string): { host: string; port: number } {
  // Brackets may hold IPv4 too: a DaemonSet writes `[$(HOST_IP)]:5001` whatever the node's address family.
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:]+):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new ConfigError(key, `"${value}" is not host:port`);
  return { host: (m[1] as string).replace(/^\[|\]$/g, ''), port };
}

const UNITS: Readonly<Record<string, number>> = { '': 1, K: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4 };

/** Bytes from a number or a Kubernetes-style quantity (`500Mi`, `20Gi`, `1G`). */
function parseBytes(key: string, value: number | string): number {
  if (typeof value === 'number') return value;
  const m = /^(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T|)$/.exec(value.trim());
  const bytes = m ? Math.floor(Number(m[1]) * (UNITS[m[2] as string] as number)) : NaN;
  if (!Number.isFinite(bytes) || bytes <= 0) throw new ConfigError(key, `"${value}" is not a size (examples: 1073741824, 500Mi, 20Gi)`);
  return bytes;
}

/** A PEM value given inline or as a file path; the key names what is wrong when it is neither. */
function readPem(key: string, value: string): string {
  if (value.includes('-----BEGIN ')) return value;
  try {
    return readFileSync(value, 'utf8');
  } catch (err) {
    throw new ConfigError(key, `cannot read ${value}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

function certificates(key: string, pem: string): string {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new ConfigError(key, 'holds no PEM certificate');
  for (const block of blocks) {
    try {
      new X509Certificate(block);
    } catch {
      throw new ConfigError(key, 'holds a malformed PEM certificate');
    }
  }
  return blocks.join('\n');
}

function resolveTransport(prefix: string, reg: RawConfig['registries'][string], raw: RawConfig): RegistryTransport {
  const ca = reg.ca === undefined ? undefined : certificates(`${prefix}.ca`, readPem(`${prefix}.ca`, reg.ca));
  if ((reg.clientCert === undefined) !== (reg.clientKey === undefined)) throw new ConfigError(`${prefix}.clientCert`, 'clientCert and clientKey go together');
  const clientCert = reg.clientCert === undefined ? undefined : certificates(`${prefix}.clientCert`, readPem(`${prefix}.clientCert`, reg.clientCert));
  let clientKey: string | undefined;
  if (reg.clientKey !== undefined) {
    clientKey = readPem(`${prefix}.clientKey`, reg.clientKey);
    try {
      createPrivateKey(clientKey);
    } catch {
      throw new ConfigError(`${prefix}.clientKey`, 'is not a PEM private key');
    }
  }
  let proxy: URL | undefined;
  if (reg.proxy !== undefined) {
    try {
      proxy = new URL(reg.proxy);
    } catch {
      throw new ConfigError(`${prefix}.proxy`, 'is not a URL');
    }
    if (proxy.protocol !== 'http:' && proxy.protocol !== 'https:') throw new ConfigError(`${prefix}.proxy`, 'must be http:// or https://');
  }
  for (const name of Object.keys(reg.headers ?? {})) {
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) || /^(authorization|host|content-length|connection)$/i.test(name)) {
      throw new ConfigError(`${prefix}.headers.${name}`, 'not a header the cache may set statically');
    }
  }
  return Object.freeze({
    ca,
    clientCert,
    clientKey,
    insecureSkipVerify: reg.insecureSkipVerify,
    headers: Object.freeze({ ...(reg.headers ?? {}) }),
    connectTimeoutMs: parseDurationKey(`${prefix}.connectTimeout`, reg.connectTimeout ?? raw.upstreamConnectTimeout),
    requestTimeoutMs: parseDurationKey(`${prefix}.requestTimeout`, reg.requestTimeout ?? raw.upstreamHeadersTimeout),
    idleTimeoutMs: parseDurationKey(`${prefix}.idleTimeout`, reg.idleTimeout ?? raw.upstreamBodyTimeout),
    proxy,
    maxSockets: reg.maxSockets,
  });
}
