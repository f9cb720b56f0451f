import { request } from 'undici';
import type { Config } from '../config/load.js';
import { parseChallenge } from './challenge.js';
import { buildDispatcher, environmentProxy, redactedProxy, transportContext, type DispatcherOptions } from './dispatchers.js';
import { errorForTransportFailure } from './errors.js';
import { drain } from './response.js';

/** What `registry-cache check` found at one endpoint of a configured registry. */
export interface EndpointCheck {
  registry: string;
  /** The endpoint's base URL (a mirror or the registry's `url`). */
  endpoint: string;
  ok: boolean;
  /** Reachability, TLS, proxy and auth challenge when it answered; otherwise the failure class and its message. */
  summary: string;
}

/**
 * Sends `GET /v2/` to every endpoint of every configured registry through its own TLS, client certificate and proxy
 * settings, as the cache would, without credentials: the answer shows the path works and which auth it asks for.
 */
export async function checkRegistries(config: Config, options: DispatcherOptions = {}): Promise<EndpointCheck[]> {
  const checks: EndpointCheck[] = [];
  for (const registry of config.registries.values()) {
    const t = registry.transport;
    const dispatcher = buildDispatcher(t, options);
    try {
      for (const endpoint of [...registry.mirrors, registry.url]) {
        const url = new URL(`${endpoint.pathname.replace(/\/$/, '')}/v2/`, endpoint);
        const base = { registry: registry.host, endpoint: endpoint.href };
        try {
          const res = await request(url, {
            dispatcher,
            method: 'GET',
            headers: { ...t.headers },
            // The pool's own timers cover connect and headers; this bounds a proxy or TLS peer that stalls otherwise.
            signal: AbortSignal.timeout(t.connectTimeoutMs + t.requestTimeoutMs + 1_000),
          });
          await drain(res.body);
          const path = [
            'reachable',
            url.protocol === 'https:' ? (t.insecureSkipVerify ? 'TLS NOT VERIFIED (insecureSkipVerify)' : 'TLS ok') : 'plain HTTP',
            t.proxy ? `proxy ok (${redactedProxy(t.proxy)})` : environmentProxy(options.env) ? 'HTTPS_PROXY/NO_PROXY apply' : 'direct',
          ];
          const challenge = res.statusCode === 401 ? parseChallenge(res.headers['www-authenticate']) : undefined;
          const realm = challenge?.params.realm;
          const auth =
            res.statusCode === 200
              ? 'auth: none'
              : challenge
                ? `auth: ${challenge.scheme}${realm ? ` (realm ${realm})` : ''}`
                : `answered ${res.statusCode} to /v2/`;
          checks.push({ ...base, ok: res.statusCode === 200 || challenge !== undefined, summary: [...path, auth].join(', ') });
        } catch (err) {
          const failure = errorForTransportFailure(err, transportContext(registry, url, options.env));
          checks.push({ ...base, ok: false, summary: `${(failure.detail as { class: string }).class}: ${failure.message}` });
        }
      }
    } finally {
      await dispatcher.close();
    }
  }
  return checks;
}
