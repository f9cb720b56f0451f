import type { LookupFunction } from 'node:net';
import { rootCertificates } from 'node:tls';
import { Agent, EnvHttpProxyAgent, ProxyAgent, type Dispatcher } from 'undici';
import type { RegistryTransport } from '../config/load.js';

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

/** A proxy URL for logs: never its credentials. */
export function redactedProxy(proxy: URL): string {
  return `${proxy.protocol}//${proxy.host}`;
}

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
      ...pool,
    });
  }
  if (environmentProxy(options.env)) return new EnvHttpProxyAgent({ connect, requestTls: tls, ...pool });
  return new Agent({ connect, ...pool });
}
