import { getDomain } from 'tldts';
import { request, type Dispatcher } from 'undici';
import type { Logger } from 'pino';
import { OciError } from '../oci/errors.js';
import type { Challenge } from './challenge.js';
import { basicAuthorization, credentialKey, type Credential } from './credentials.js';
import { errorForTransportFailure, type TransportContext } from './errors.js';
import { drain, readCapped } from './response.js';

/** Tokens without `expires_in` live this long (the distribution token spec's default). */
const DEFAULT_TOKEN_TTL_S = 60;
/** Refresh a little early so a token never expires mid-request. */
const EXPIRY_MARGIN_MS = 5_000;
const MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024;

interface CachedToken {
  token: string;
  expiresAt: number;
}

/**
 * Whether credentials may be sent to `realm` when talking to `upstream`: the same registrable domain (Docker Hub's
 * realm is auth.docker.io for registry-1.docker.io), never downgraded to http. Without a registrable domain (an IP
 * address, `localhost`, a single-label name) only the same origin qualifies: another port on the same machine is
 * another service, not the registry.
 */
export function realmMayReceiveCredentials(realm: URL, upstream: URL): boolean {
  if (realm.protocol !== 'https:' && upstream.protocol === 'https:') return false;
  const a = getDomain(realm.hostname, { allowPrivateDomains: true });
  const b = getDomain(upstream.hostname, { allowPrivateDomains: true });
  if (a && b) return a === b;
  return realm.origin === upstream.origin;
}

/** Fetches and caches Bearer tokens per (upstream, scope, credential); concurrent fetches of one token share a request. */
export class TokenCache {
  private readonly tokens = new Map<string, CachedToken>();
  private readonly pending = new Map<string, Promise<string>>();

  constructor(private readonly log: Logger) {}

  /** A cached, unexpired token, if any. */
  cached(upstream: URL, scope: string, credential: Credential | undefined): string | undefined {
    const key = this.key(upstream, scope, credential);
    const hit = this.tokens.get(key);
    if (hit && hit.expiresAt > Date.now()) return hit.token;
    if (hit) this.tokens.delete(key);
    return undefined;
  }

  /** Drops expired tokens: scopes are chosen by clients (any repository name), so the map must not only grow. */
  private sweep(): void {
    const now = Date.now();
    for (const [k, t] of this.tokens) if (t.expiresAt <= now) this.tokens.delete(k);
  }

  /** Drops a token the upstream rejected. */
  forget(upstream: URL, scope: string, credential: Credential | undefined): void {
    this.tokens.delete(this.key(upstream, scope, credential));
  }

  /** Obtains a token answering `challenge`, sharing concurrent fetches. */
  async obtain(
    dispatcher: Dispatcher,
    upstream: URL,
    target: TransportContext,
    challenge: Challenge,
    scope: string,
    credential: Credential | undefined,
    signal?: AbortSignal,
  ): Promise<string> {
    const key = this.key(upstream, scope, credential);
    const inflight = this.pending.get(key);
    if (inflight) return inflight;
    const p = this.fetchToken(dispatcher, upstream, target, challenge, scope, credential, signal).then((t) => {
      this.sweep();
      this.tokens.set(key, { token: t.token, expiresAt: Date.now() + t.ttlMs - EXPIRY_MARGIN_MS });
      return t.token;
    });
    this.pending.set(key, p);
    try {
      return await p;
    } finally {
      this.pending.delete(key);
    }
  }

  private key(upstream: URL, scope: string, credential: Credential | undefined): string {
    return `${upstream.origin}\n${scope}\n${credentialKey(credential)}`;
  }

  private async fetchToken(
    dispatcher: Dispatcher,
    upstream: URL,
    target: TransportContext,
    challenge: Challenge,
    scope: string,
    credential: Credential | undefined,
    signal?: AbortSignal,
  ): Promise<{ token: string; ttlMs: number }> {
    const registry = target.registry;
    const realmText = challenge.params.realm;
    if (!realmText) throw new OciError('UNAVAILABLE', `upstream ${registry} sent a Bearer challenge without realm`, { status: 502 });
    let realm: URL;
    try {
      realm = new URL(realmText);
    } catch {
      throw new OciError('UNAVAILABLE', `upstream ${registry} sent an invalid token realm`, { status: 502 });
    }
    if (realm.protocol !== 'https:' && realm.protocol !== 'http:') {
      throw new OciError('UNAVAILABLE', `upstream ${registry} sent a non-HTTP token realm`, { status: 502 });
    }
    if (challenge.params.service) realm.searchParams.set('service', challenge.params.service);
    realm.searchParams.set('scope', challenge.params.scope ?? scope);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (credential) {
      if (realmMayReceiveCredentials(realm, upstream)) headers.authorization = basicAuthorization(credential);
      else this.log.warn({ registry, realmHost: realm.host }, 'token realm is on another domain; asking it anonymously');
    }
    let res: Dispatcher.ResponseData;
    try {
      res = await request(realm, { dispatcher, method: 'GET', headers, signal });
    } catch (err) {
      throw errorForTransportFailure(err, { ...target, url: realm });
    }
    if (res.statusCode === 401 || res.statusCode === 403) {
      await drain(res.body);
      throw new OciError(res.statusCode === 401 ? 'UNAUTHORIZED' : 'DENIED', `token service of ${registry} refused the credentials`, {
        detail: { registry, upstreamStatus: res.statusCode },
      });
    }
    if (res.statusCode !== 200) {
      await drain(res.body);
      throw new OciError('UNAVAILABLE', `token service of ${registry} answered ${res.statusCode}`, { status: 502, detail: { registry } });
    }
    // A realm that breaks off its answer is an upstream failure (502/504) like any other body, not a crash (500).
    const text = (
      await readCapped(res.body, MAX_TOKEN_RESPONSE_BYTES, registry, () => new OciError('UNAVAILABLE', 'token response too large', { status: 502 }))
    ).toString('utf8');
    let body: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      body = JSON.parse(text) as typeof body;
    } catch {
      throw new OciError('UNAVAILABLE', `token service of ${registry} sent invalid JSON`, { status: 502 });
    }
    const token = typeof body.token === 'string' ? body.token : typeof body.access_token === 'string' ? body.access_token : undefined;
    if (!token) throw new OciError('UNAVAILABLE', `token service of ${registry} sent no token`, { status: 502 });
    const ttlS = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_TTL_S;
    return { token, ttlMs: Math.max(ttlS * 1000, EXPIRY_MARGIN_MS * 2) };
  }
}
