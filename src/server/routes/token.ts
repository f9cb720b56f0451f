import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Config } from '../../config/load.js';
import { OciError } from '../../oci/errors.js';
import { resolveTarget, type Target } from '../../oci/path.js';
import type { CredentialHasher } from '../../policy/credential-hash.js';
import type { TokenService } from '../../policy/tokens.js';
import type { Credential } from '../../policy/tokens.js';
import { TOKEN_PATH, decodeBasic, identityFor } from '../client-auth.js';

/** What the token endpoint needs. */
export interface TokenDeps {
  config: Config;
  tokens: TokenService;
  hasher: CredentialHasher;
}

/**
 * The cache's token realm (distribution token spec): containerd POSTs `grant_type=password` forms; other clients
 * GET with Basic auth or anonymously. The token is opaque, short-lived, and bound to (credential, repository).
 */
export function registerTokenRoutes(app: FastifyInstance, deps: TokenDeps): void {
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 16 * 1024 }, (_req, body, done) => {
    done(null, new URLSearchParams(body as string));
  });
  const known = new Set(deps.config.registries.keys());

  const handler = async (request: FastifyRequest): Promise<Record<string, unknown>> => {
    const query = new URLSearchParams(request.url.split('?')[1] ?? '');
    const form = request.body instanceof URLSearchParams ? request.body : new URLSearchParams();
    let credential: Credential | undefined;
    if (request.method === 'POST') {
      const grant = form.get('grant_type');
      if (grant !== 'password') throw new OciError('UNSUPPORTED', `grant_type ${grant ?? '(none)'} is not supported`, { status: 400 });
      credential = { username: form.get('username') ?? '', password: form.get('password') ?? '' };
    } else if (request.headers.authorization && /^basic /i.test(request.headers.authorization)) {
      credential = decodeBasic(request.headers.authorization);
      if (!credential) throw new OciError('UNAUTHORIZED', 'malformed Basic credentials');
    }
    const scopes = [...query.getAll('scope'), ...form.getAll('scope')].flatMap((s) => s.split(' '));
    const given = query.getAll('ns');
    // As on /v2/: a repeated ns is refused, so the token's scope and the request it is for name the same registry.
    if (given.length > 1) throw new OciError('UNSUPPORTED', 'query parameter ns may be given once', { status: 400 });
    const ns = given[0];
    let target: Target | undefined;
    for (const scope of scopes) {
      const m = /^repository:(.+):([a-z,*]+)$/.exec(scope);
      if (!m) continue;
      target = resolveTarget(m[1] as string, ns, known, deps.config.defaultRegistry);
      break;
    }
    request.cacheStatus = 'token';
    const { token, expiresInS } = deps.tokens.issue(identityFor(credential, deps.hasher), target);
    return { token, access_token: token, expires_in: expiresInS, issued_at: new Date().toISOString() };
  };

  app.get(TOKEN_PATH, handler);
  app.post(TOKEN_PATH, handler);
}
