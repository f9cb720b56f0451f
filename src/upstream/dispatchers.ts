import type { LookupFunction, Socket } from 'node:net';
import { rootCertificates } from 'node:tls';
import { Agent, EnvHttpProxyAgent, Pool, ProxyAgent, buildConnector, type Dispatcher } from 'undici';
import type { RegistryConfig, RegistryTransport } from '../config/load.js';
import type { TransportContext } from './errors.js';

/** Test hook: resolve names without DNS (e.g. `*.docker.test` → 127.0.0.1). */
export interface DispatcherOptions {
  lookup?: LookupFunction;
  env?: NodeJS.ProcessEnv;
}

const ENV_PROXY_VARS = ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy'];

/** Whether the environment names an egress proxy (undici's EnvHttpProxyAgent then also honours NO_PROXY). */
export function environmentProxy(env: NodeJS.ProcessEnv = process.env): boolean {
  return ENV_PROXY_VARS.some((v) => Boolean(env[v]));
}

/** What a transport failure of `registry` at `url` may blame: the URL, the registry's proxy and client certificate. */
export function transportContext(registry: RegistryConfig, url: URL, env: NodeJS.ProcessEnv = process.env): TransportContext {
  const proxy = registry.transport.proxy;
  return {
    registry: registry.host,
    url,
    ...(proxy ? { proxy } : { environmentProxy: environmentProxy(env) }),
    clientCert: registry.transport.clientCert !== undefined,
  };
}

/** A proxy URL for logs: never its credentials. */
export function redactedProxy(proxy: URL): string {
  return `${proxy.protocol}//${proxy.host}`;
}

/**
 * A connector whose sockets fail with the TLS alert the server sent after the handshake (TLS 1.3 `certificate
 * required`, `bad certificate`): undici 8 replaces that error with "other side closed" when the close follows it,
 * and the operator would never learn that a client certificate is wanted. Destroying the socket on the alert keeps it.
 */
function keepingTlsAlerts(connect: Pool.Options['connect']): buildConnector.connector {
  const inner = typeof connect === 'function' ? connect : buildConnector(connect ?? {});
  return (options, callback) =>
    // The built-in connector returns its socket so undici can cancel a pending connect: pass it through.
    (inner as (...args: Parameters<buildConnector.connector>) => unknown)(options, (...args: buildConnector.CallbackArgs) => {
      const socket = args[1] as Socket | null;
      socket?.on('error', (err: Error) => {
        if (/SSL alert number/.test(err.message)) socket.destroy();
      });
      callback(...args);
    }) as void;
}

/** Every pool of a registry's dispatcher connects through keepingTlsAlerts, direct or tunnelled through a proxy. */
const poolFactory = (origin: string | URL, options: object): Dispatcher => {
  const opts = options as Pool.Options;
  return new Pool(origin, { ...opts, connect: keepingTlsAlerts(opts.connect) });
};

/**
 * The connection pool for one registry: its TLS trust (extra CAs on top of the system roots), client certificate,
 * verification switch, timeouts and socket cap, through its explicit proxy, the environment's proxy, or directly.
 */
export function buildDispatcher(t: RegistryTransport, options: DispatcherOptions = {}): Dispatcher {
  const tls = {
    ...(t.ca ? { ca: [...rootCertificates, t.ca] } : {}),
    ...(t.clientCert && t.clientKey ? { cert: t.clientCert, key: t.clientKey } : {}),
    rejectUnauthorized: !t.insecureSkipVerify,
    ...(options.lookup ? { lookup: options.lookup } : {}),
  };
  const pool = { headersTimeout: t.requestTimeoutMs, bodyTimeout: t.idleTimeoutMs, keepAliveTimeout: 30_000, connections: t.maxSockets };
  const connect = { timeout: t.connectTimeoutMs, ...tls };
  const proxied = {
    ...pool,
    factory: poolFactory,
    // The CONNECT exchange has undici's own 300 s headers timeout otherwise: a proxy that never answers would hold
    // every request for minutes. The proxy's answer includes its own connect to the registry, so requestTimeout.
    clientFactory: (origin: URL, opts: object): Dispatcher => new Pool(origin, { ...(opts as Pool.Options), headersTimeout: t.requestTimeoutMs }),
    // The TLS handshake with the registry inside the tunnel takes its timeout from here, not from `connect`
    // (undici's default is 10 s).
    connectTimeout: t.connectTimeoutMs,
  };
  if (t.proxy) {
    const uri = new URL(t.proxy.href);
    const user = decodeURIComponent(uri.username);
    const pass = decodeURIComponent(uri.password);
    uri.username = '';
    uri.password = '';
    return new ProxyAgent({
      uri: uri.href,
      ...(user ? { token: `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}` } : {}),
      requestTls: tls,
      proxyTls: { timeout: t.connectTimeoutMs, ...(options.lookup ? { lookup: options.lookup } : {}) },
      connect,
      ...proxied,
    });
  }
  if (environmentProxy(options.env)) return new EnvHttpProxyAgent({ connect, requestTls: tls, ...proxied });
  return new Agent({ connect, factory: poolFactory, ...pool });
}
