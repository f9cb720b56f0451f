import { Type, type Static } from '@sinclair/typebox';

const Duration = Type.String({ description: 'a Go-style duration: 0s, 500ms, 1m30s, 2h' });

// The kubelet's `imagePullCredentialsVerificationPolicy` values: the one list of them.
const VerificationPolicySchema = Type.Union(
  (['NeverVerify', 'NeverVerifyPreloadedImages', 'NeverVerifyAllowListedImages', 'AlwaysVerify'] as const).map((p) => Type.Literal(p)),
  { default: 'NeverVerifyPreloadedImages' },
);
/** One verification policy: which stored images a client may have without its credentials being checked. */
export type VerificationPolicy = Static<typeof VerificationPolicySchema>;

const LogLevelSchema = Type.Union(
  (['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const).map((l) => Type.Literal(l)),
  { default: 'info' },
);
/** A pino log level, or `silent`. */
export type LogLevel = Static<typeof LogLevelSchema>;

const PeerDiscoverySchema = Type.Union([Type.Literal('static'), Type.Literal('kubernetes')], { default: 'static' });
/** Where the members of a sharing cluster come from: the `peers` list or the Service's EndpointSlices. */
export type PeerDiscovery = Static<typeof PeerDiscoverySchema>;

/**
 * One upstream registry the cache may contact. Its own `default` makes TypeBox fill the defaults of its keys: a record's
 * values are defaulted only when their schema has one.
 */
export const RegistrySchema = Type.Object(
  {
    url: Type.String({ description: 'Base URL of the registry API, http(s)://host[:port]' }),
    mirrors: Type.Optional(Type.Array(Type.String(), { description: 'endpoints tried in order before url (e.g. a cluster cache)' })),
    username: Type.Optional(Type.String()),
    password: Type.Optional(Type.String()),
    ca: Type.Optional(Type.String({ description: 'PEM CA bundle (inline, or a file path), added to the system roots' })),
    clientCert: Type.Optional(Type.String({ description: 'PEM client certificate for mTLS (inline or file)' })),
    clientKey: Type.Optional(Type.String({ description: 'PEM client key for mTLS (inline or file)' })),
    insecureSkipVerify: Type.Boolean({ default: false }),
    headers: Type.Optional(Type.Record(Type.String(), Type.String(), { description: 'static headers sent upstream' })),
    connectTimeout: Type.Optional(Type.String({ description: 'duration; default upstreamConnectTimeout' })),
    requestTimeout: Type.Optional(Type.String({ description: 'time to response headers; default upstreamHeadersTimeout' })),
    idleTimeout: Type.Optional(Type.String({ description: 'no body bytes for this long aborts; default upstreamBodyTimeout' })),
    proxy: Type.Optional(Type.String({ description: 'egress proxy URL for this registry (overrides HTTPS_PROXY/HTTP_PROXY)' })),
    // Enough for parallel layers, bounded so that one registry cannot take every socket.
    maxSockets: Type.Integer({ minimum: 1, default: 32, description: 'connections per upstream origin; default 32' }),
    redirectAllowlist: Type.Array(Type.String(), { default: [], description: 'redirect targets allowed on non-public addresses (private CDNs): host, *.domain or IP' }),
  },
  { additionalProperties: false, default: {} },
);

/** The upstreams a cache with no `registries` key may contact. */
export const DEFAULT_REGISTRIES: Readonly<Record<string, { url: string }>> = Object.freeze({
  'docker.io': { url: 'https://registry-1.docker.io' },
  'ghcr.io': { url: 'https://ghcr.io' },
  'quay.io': { url: 'https://quay.io' },
  'registry.k8s.io': { url: 'https://registry.k8s.io' },
});

/** The whole configuration file; every key is optional and has a frozen default. */
export const ConfigSchema = Type.Object(
  {
    listen: Type.String({ default: '127.0.0.1:5000', description: 'host:port, e.g. 127.0.0.1:5000' }),
    metricsListen: Type.Optional(Type.String({ description: 'host:port for /metrics, /healthz and /readyz on their own listener' })),
    storage: Type.String({ default: './storage', description: 'a directory path' }),
    defaultRegistry: Type.String({ default: 'docker.io', description: 'a registry host named under registries, e.g. docker.io' }),
    // Its default is DEFAULT_REGISTRIES, applied by load.ts: TypeBox would merge a record default into given keys.
    registries: Type.Record(Type.String(), RegistrySchema),
    tagTtl: Type.String({ ...Duration, default: '0s' }),
    logLevel: LogLevelSchema,
    upstreamConnectTimeout: Type.String({ ...Duration, default: '500ms' }),
    upstreamHeadersTimeout: Type.String({ ...Duration, default: '30s' }),
    upstreamBodyTimeout: Type.String({ ...Duration, default: '60s' }),
    fillTimeout: Type.String({ ...Duration, default: '1h' }),
    imagePullCredentialsVerificationPolicy: VerificationPolicySchema,
    preloadedImagesVerificationAllowlist: Type.Array(Type.String(), { default: [] }),
    nodeDockerConfig: Type.Optional(Type.String({ description: 'Docker config.json with node-wide credentials (kubelet rules)' })),
    credentialProviderConfig: Type.Optional(Type.String({ description: 'kubelet CredentialProviderConfig file' })),
    credentialProviderBinDir: Type.Optional(Type.String({ description: 'directory of credential provider plugins' })),
    tokenTtl: Type.String({ ...Duration, default: '5m' }),
    imageGCHighThresholdPercent: Type.Integer({ minimum: 0, maximum: 100, default: 85 }),
    imageGCLowThresholdPercent: Type.Integer({ minimum: 0, maximum: 100, default: 80 }),
    maxStorageBytes: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.String()], { description: 'bytes, or with a unit: 500Mi, 20Gi, 1G' })),
    pinnedImages: Type.Array(Type.String(), { default: [] }),
    gcInterval: Type.String({ ...Duration, default: '1m' }),
    shutdownTimeout: Type.String({ ...Duration, default: '25s' }),
    // Unset differs from false: false without maxParallelImagePulls means no limit (the kubelet's rule).
    serializeImagePulls: Type.Optional(Type.Boolean()),
    // The default applies only when neither key is set (load.ts); a node cache limits upstream pulls by default,
    // enough to overlap transfers, few enough to protect the link. `null` means no limit.
    maxParallelImagePulls: Type.Integer({ default: 5, description: 'images transferring from upstreams at once (kubelet rules)' }),
    pullQueueTimeout: Type.String({ ...Duration, default: '1m' }),
    pullLinger: Type.String({ ...Duration, default: '3s' }),
    upstreamBandwidthLimit: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.String()], { description: 'bytes/s shared by all transfers: 50Mi, 100M' })),
    peers: Type.Array(Type.String({ description: 'host:port of a peer listener' }), { default: [], description: 'peer listeners of the cluster members (self included or not)' }),
    peerListen: Type.Optional(Type.String({ description: 'host:port of this node\'s peer listener' })),
    peerSecret: Type.Optional(Type.String({ description: 'a file holding the cluster\'s shared peer secret (at least 32 bytes)' })),
    peerDiscovery: PeerDiscoverySchema,
    peerService: Type.Optional(Type.String({ description: 'headless Service whose EndpointSlices list the members (peerDiscovery: kubernetes)' })),
    peerPortName: Type.String({ default: 'peer', description: 'name of the peer port in the Service' }),
    peerConnectTimeout: Type.String({ ...Duration, default: '200ms' }),
    peerAnswerTimeout: Type.String({ ...Duration, default: '500ms' }),
    peerIdleTimeout: Type.String({ ...Duration, default: '5s' }),
    peerSharePrivateLayers: Type.Boolean({ default: false, description: 'also share blobs that needed a tenant credential (see README: Sharing between nodes)' }),
  },
  { additionalProperties: false },
);

/** The configuration as written, with the schema's defaults filled in (strings for durations). */
export type RawConfig = Static<typeof ConfigSchema>;
