import { Readable } from 'node:stream';
import type { IncomingHttpHeaders } from 'node:http';
import { request, type Dispatcher } from 'undici';
import { buildDispatcher, transportContext, type DispatcherOptions } from './dispatchers.js';
import type { Logger } from 'pino';
import type { RegistryConfig } from '../config/load.js';
import { parseChallenge } from './challenge.js';
import { basicAuthorization, type Credential } from './credentials.js';
import { errorForTransportFailure, transportFailureOf, type TransportContext, type UpstreamFailureClass } from './errors.js';
import { TokenCache } from './auth.js';
import { OciError } from '../oci/errors.js';
import { checkRedirectTarget, publicOnlyLookup, redirectExempt } from './redirects.js';
import { drain, type UpstreamResponse } from './response.js';

// Callers that hold the client get the answer type and the drain with it; both live in response.ts.
export { drain, type UpstreamResponse };

/** One request to an upstream registry's `/v2/` API. */
export interface UpstreamRequest {
  registry: RegistryConfig;
  method: 'GET' | 'HEAD';
  /** Path below the registry's base URL, starting with `/v2/`. */
  path: string;
  query?: Record<string, string>;
  headers?: Record<string, string>;
  /** Repository the request is scoped to (for the Bearer `repository:<name>:pull` scope). */
  repository?: string;
  /** Credentials to present if challenged; none means anonymous (the policy layer picks node-wide ones). */
  credential?: Credential;
  signal?: AbortSignal;
}

/** How the client reaches upstreams. */
export interface UpstreamClientOptions {
  log: Logger;
  /** Tests pass their own dispatcher (used for every registry). */
  dispatcher?: Dispatcher;
  /** Passed to every registry's pool (tests map names to loopback). */
  dispatcherOptions?: DispatcherOptions;
  /** Called with every upstream exchange's time to headers. */
  observe?: (registry: string, method: string, status: number | 'error', seconds: number) => void;
  /** Called once per endpoint that could not be reached, with what went wrong. */
  onTransportFailure?: (registry: string, failure: UpstreamFailureClass) => void;
}

const MAX_REDIRECTS = 5;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);

/** Talks to upstream registries: auth challenges, token reuse, redirects without leaking credentials. */
export class UpstreamClient {
  private readonly shared: Dispatcher | undefined;
  /** One pool per registry: its TLS, proxy, timeouts and socket cap. */
  private readonly pools = new Map<string, Dispatcher>();
  /** One pool per registry for redirect targets off its own hosts: it connects only to public addresses. */
  private readonly redirectPools = new Map<string, Dispatcher>();
  private readonly dispatcherOptions: DispatcherOptions;
  private readonly tokens: TokenCache;
  /** Upstreams that answered a Basic challenge: later requests send Basic up front. */
  private readonly basicOrigins = new Set<string>();
  private readonly log: Logger;
  private readonly observe: UpstreamClientOptions['observe'];
  private readonly onTransportFailure: UpstreamClientOptions['onTransportFailure'];

  constructor(options: UpstreamClientOptions) {
    this.log = options.log;
    this.observe = options.observe;
    this.onTransportFailure = options.onTransportFailure;
    this.shared = options.dispatcher;
    this.dispatcherOptions = options.dispatcherOptions ?? {};
    this.tokens = new TokenCache(this.log);
  }

  /** The registry's connection pool, built on first use. */
  private dispatcherFor(registry: RegistryConfig): Dispatcher {
    if (this.shared) return this.shared;
    let pool = this.pools.get(registry.host);
    if (!pool) {
      pool = buildDispatcher(registry.transport, this.dispatcherOptions);
      this.pools.set(registry.host, pool);
    }
    return pool;
  }

  /** The pool for a redirect target: the registry's own hosts and allowlist use its pool, anything else a guarded one. */
  private redirectDispatcherFor(registry: RegistryConfig, target: URL): Dispatcher {
    if (this.shared || redirectExempt(registry, target.hostname)) return this.dispatcherFor(registry);
    let pool = this.redirectPools.get(registry.host);
    if (!pool) {
      const lookup = publicOnlyLookup((hostname) => redirectExempt(registry, hostname), this.dispatcherOptions.lookup);
      pool = buildDispatcher(registry.transport, { ...this.dispatcherOptions, lookup });
      this.redirectPools.set(registry.host, pool);
    }
    return pool;
  }

  /** What a transport failure's message may blame: the URL tried, the registry's proxy and client certificate. */
  private contextFor(registry: RegistryConfig, url: URL): TransportContext {
    return transportContext(registry, url, this.dispatcherOptions.env);
  }

  /**
   * Sends a request to the registry's endpoints in order (`mirrors`, then `url`): a connection failure, a timeout or
   * a 5xx moves on to the next at once, and so does a 404 from a mirror; each endpoint authenticates on its own.
   */
  async send(req: UpstreamRequest): Promise<UpstreamResponse> {
    const endpoints = [...req.registry.mirrors, req.registry.url];
    for (let i = 0; ; i++) {
      const endpoint = endpoints[i] as URL;
      const last = i === endpoints.length - 1;
      let res: UpstreamResponse;
      try {
        res = await this.sendTo(endpoint, req);
      } catch (err) {
        const failure = req.signal?.aborted ? undefined : transportFailureOf(err);
        if (failure) {
          this.onTransportFailure?.(req.registry.host, failure.class);
          const message = (err as Error).message;
          this.log.warn({ registry: req.registry.host, endpoint: endpoint.origin, class: failure.class, code: failure.code, err: { message } }, 'upstream connection failed');
        }
        if (last || req.signal?.aborted) throw err;
        this.log.warn({ registry: req.registry.host, endpoint: endpoint.origin, err: { message: (err as Error).message } }, 'upstream endpoint failed; trying the next');
        continue;
      }
      const mirror = i < req.registry.mirrors.length;
      if (!last && (res.status >= 500 || (mirror && res.status === 404))) {
        await drain(res.body);
        continue;
      }
      return res;
    }
  }

  /** One endpoint: answers one auth challenge and follows redirects. Throws OciError on transport failure. */
  private async sendTo(base: URL, req: UpstreamRequest): Promise<UpstreamResponse> {
    const url = new URL(base.pathname.replace(/\/$/, '') + req.path, base);
    for (const [k, v] of Object.entries(req.query ?? {})) url.searchParams.set(k, v);
    const credential = req.credential;
    const scope = req.repository ? `repository:${req.repository}:pull` : '';

    const authorization = (): string | undefined => {
      const token = this.tokens.cached(base, scope, credential);
      if (token) return `Bearer ${token}`;
      if (credential && this.basicOrigins.has(base.origin)) return basicAuthorization(credential);
      return undefined;
    };

    const sent = authorization();
    let res = await this.follow(req, base, url, sent);
    if (res.status !== 401) return res;
    if (res.url.origin !== base.origin) {
      // Only the registry's own challenge is answered. A redirect target never gets the token (it goes to the
      // endpoint's origin only), so answering could not help: it would only let the target pick the realm that gets
      // the client's credentials (any host of the registry's domain: another customer's `<name>.azurecr.io`). Nor is
      // it the client's credential that failed: the download is broken.
      await drain(res.body);
      throw new OciError('UNAVAILABLE', `upstream ${req.registry.host} redirected to a download that asks for credentials`, {
        status: 502,
        detail: { registry: req.registry.host, redirectHost: res.url.hostname.slice(0, 200) },
      });
    }

    const challenge = parseChallenge(res.headers['www-authenticate']);
    if (!challenge) return res;
    // Remember the scheme even for an anonymous request: the next request with credentials sends them at once.
    if (challenge.scheme === 'basic') this.basicOrigins.add(base.origin);
    if (challenge.scheme === 'bearer') {
      await drain(res.body);
      this.tokens.forget(base, scope, credential);
      const token = await this.tokens.obtain(this.dispatcherFor(req.registry), base, this.contextFor(req.registry, base), challenge, scope, credential, req.signal);
      res = await this.follow(req, base, url, `Bearer ${token}`);
    } else if (challenge.scheme === 'basic' && credential && !sent?.startsWith('Basic ')) {
      // Retrying the same Basic credentials that were just refused would only repeat the refusal.
      await drain(res.body);
      res = await this.follow(req, base, url, basicAuthorization(credential));
    }
    return res;
  }

  /** Closes pooled connections. */
  async close(): Promise<void> {
    await Promise.all([...this.pools.values(), ...this.redirectPools.values()].map((p) => p.close()));
    this.pools.clear();
    this.redirectPools.clear();
  }

  private async follow(req: UpstreamRequest, base: URL, start: URL, authorization: string | undefined): Promise<UpstreamResponse> {
    let url = start;
    for (let hop = 0; ; hop++) {
      const sameOrigin = url.origin === base.origin;
      // Static headers and credentials belong to the registry's endpoint only; a CDN redirect target sees neither.
      const headers: Record<string, string> = { ...(sameOrigin ? req.registry.transport.headers : {}), ...(req.headers ?? {}) };
      if (authorization && sameOrigin) headers.authorization = authorization;
      let res: Dispatcher.ResponseData;
      const started = performance.now();
      try {
        const dispatcher = hop === 0 ? this.dispatcherFor(req.registry) : this.redirectDispatcherFor(req.registry, url);
        // undici closes the connection after every HEAD (in case a server sends a body anyway), so each tag
        // revalidation paid a new TCP and TLS handshake (measured against docker-registry with undici 8.13: 10
        // revalidations, 10 connections). Registries answer HEAD per RFC 9110; keep the connection.
        res = await request(url, { dispatcher, method: req.method, headers, signal: req.signal, ...(req.method === 'HEAD' ? { reset: false } : {}) });
      } catch (err) {
        this.observe?.(req.registry.host, req.method, 'error', (performance.now() - started) / 1000);
        throw errorForTransportFailure(err, this.contextFor(req.registry, url));
      }
      this.observe?.(req.registry.host, req.method, res.statusCode, (performance.now() - started) / 1000);
      const location = res.headers.location;
      if (REDIRECT_STATUSES.has(res.statusCode) && typeof location === 'string' && hop < MAX_REDIRECTS) {
        await drain(res.body);
        try {
          url = new URL(location, url);
        } catch {
          throw new OciError('UNAVAILABLE', `upstream ${req.registry.host} redirected to an invalid URL`, { status: 502 });
        }
        // Only http(s) to a public address, the registry's own hosts or its allowlist: never the node's loopback,
        // link-local metadata service or private network.
        await checkRedirectTarget(req.registry, url, this.dispatcherOptions.lookup);
        continue;
      }
      return { status: res.statusCode, headers: res.headers as IncomingHttpHeaders, body: res.body as unknown as Readable, url };
    }
  }
}

/** An empty body, for answers synthesized without an upstream body. */
export function emptyBody(): Readable {
  return Readable.from([]);
}
