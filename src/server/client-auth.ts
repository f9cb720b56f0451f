import type { FastifyRequest } from 'fastify';
import { OciError } from '../oci/errors.js';
import type { Target } from '../oci/path.js';
import type { CredentialHasher } from '../policy/credential-hash.js';
import type { Identity, TokenService } from '../policy/tokens.js';
import type { Access } from '../policy/verifier.js';
import type { RegistryConfig } from '../config/load.js';
import type { Credential } from '../policy/tokens.js';

/** The service name in the cache's own challenges. */
export const TOKEN_SERVICE = 'registry-cache';
/** Where the cache's token endpoint lives. */
export const TOKEN_PATH = '/auth/token';

/** Decodes `Basic base64(user:pass)`; undefined if malformed. */
export function decodeBasic(header: string): Credential | undefined {
  const decoded = Buffer.from(header.slice('Basic '.length).trim(), 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i < 0) return undefined;
  return { username: decoded.slice(0, i), password: decoded.slice(i + 1) };
}

/** Turns a presented credential into an identity; skopeo's empty `Basic Og==` means anonymous. */
export function identityFor(credential: Credential | undefined, hasher: CredentialHasher): Identity {
  if (!credential || (credential.username === '' && credential.password === '')) return { kind: 'anonymous' };
  return { kind: 'credential', credential, hash: hasher.hash(credential) };
}

/** Reads who a request comes from. An unknown, expired or out-of-scope token is answered with a fresh challenge. */
export function identify(
  request: FastifyRequest,
  target: Target | undefined,
  deps: { tokens: TokenService; hasher: CredentialHasher },
  challenge: () => OciError,
): Identity {
  const header = request.headers.authorization;
  if (!header) return { kind: 'none' };
  if (/^basic /i.test(header)) {
    const credential = decodeBasic(header);
    if (!credential) throw new OciError('UNAUTHORIZED', 'malformed Basic credentials');
    return identityFor(credential, deps.hasher);
  }
  if (/^bearer /i.test(header)) {
    const identity = deps.tokens.resolve(header.slice(7).trim(), target);
    if (identity) return identity;
  }
  throw challenge();
}

/** A Host header that is a bare name, IPv4 or bracketed IPv6 address, with an optional port: nothing to quote. */
const HOST_HEADER_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/;

/**
 * Where the client reached the cache: its Host header when well-formed (a client that connected through a name gets
 * its realm under that name), otherwise the address of the socket it connected to. A Host is client input: it must
 * never be able to quote its way into the challenge (a second `realm=`) or point the realm at a path.
 */
function realmAuthority(request: FastifyRequest): string {
  const host = request.headers.host;
  if (host !== undefined && HOST_HEADER_RE.test(host)) return host;
  const socket = request.socket;
  const address = (socket.localAddress ?? '127.0.0.1').replace(/^::ffff:(?=\d+\.)/, '');
  return `${address.includes(':') ? `[${address}]` : address}:${socket.localPort ?? 80}`;
}

/** A 401 whose Bearer challenge points the client at the cache's own token realm. */
export function challengeFor(request: FastifyRequest, scopeName: string | undefined, ns: string | undefined): OciError {
  const host = realmAuthority(request);
  const realm = `http://${host}${TOKEN_PATH}${ns ? `?ns=${encodeURIComponent(ns)}` : ''}`;
  const scope = scopeName ? `,scope="repository:${scopeName}:pull"` : '';
  return new OciError('UNAUTHORIZED', 'authentication required', {
    headers: { 'www-authenticate': `Bearer realm="${realm}",service="${TOKEN_SERVICE}"${scope}` },
  });
}

/** What identifying a client needs: the cache's token service and the credential hasher. */
export interface ClientAuthDeps {
  tokens: TokenService;
  hasher: CredentialHasher;
}

/** Who asks for what: the client's identity for `target`, and the challenge that makes it present credentials. */
export function clientAccess(request: FastifyRequest, route: { name: string; ns: string | undefined }, target: Target, registry: RegistryConfig, deps: ClientAuthDeps): Access {
  const challenge = (): OciError => challengeFor(request, route.name, route.ns);
  return { registry, repository: target.repository, identity: identify(request, target, deps, challenge), challenge };
}
