import { randomBytes } from 'node:crypto';
import type { Target } from '../oci/path.js';
import type { Credential } from '../upstream/credentials.js';

/** Who a client is, as far as the cache can tell. */
export type Identity =
  /** Sent no Authorization at all: may still hold credentials it shows only after a challenge. */
  | { kind: 'none' }
  /** Went through the challenge without credentials (anonymous token, or Basic with empty user and password). */
  | { kind: 'anonymous' }
  /** Presented a credential; `hash` is its keyed hash. */
  | { kind: 'credential'; credential: Credential; hash: string };

interface IssuedToken {
  identity: Identity;
  /** The repository the token is scoped to; undefined for a scope-less (ping) token. */
  target: Target | undefined;
  expiresAt: number;
}

/**
 * Opaque, short-lived tokens the cache issues from its own realm. A credential lives only here, in memory,
 * only as long as its token; nothing of it is written anywhere.
 */
export class TokenService {
  private readonly tokens = new Map<string, IssuedToken>();
  private readonly sweeper: NodeJS.Timeout;

  /** `maxTokens` bounds memory: anyone may mint anonymous tokens, so the oldest go first when it is reached. */
  constructor(
    readonly ttlMs: number,
    private readonly maxTokens = 100_000,
  ) {
    // Expired credentials must not linger in memory until the next token is issued.
    this.sweeper = setInterval(() => this.sweep(), Math.min(ttlMs, 30_000));
    this.sweeper.unref();
  }

  /** Issues a token bound to (identity, target). */
  issue(identity: Identity, target: Target | undefined): { token: string; expiresInS: number } {
    while (this.tokens.size >= this.maxTokens) {
      const oldest = this.tokens.keys().next().value;
      if (oldest === undefined) break;
      this.tokens.delete(oldest);
    }
    const token = randomBytes(32).toString('base64url');
    this.tokens.set(token, { identity, target, expiresAt: Date.now() + this.ttlMs });
    return { token, expiresInS: Math.floor(this.ttlMs / 1000) };
  }

  /** The identity behind a live token, if `target` is within its scope. */
  resolve(token: string, target: Target | undefined): Identity | undefined {
    const entry = this.tokens.get(token);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      this.tokens.delete(token);
      return undefined;
    }
    if (target && (!entry.target || entry.target.registry !== target.registry || entry.target.repository !== target.repository)) return undefined;
    return entry.identity;
  }

  /** Number of live tokens (for tests and metrics). */
  get size(): number {
    return this.tokens.size;
  }

  /** Drops every expired token (and the credential it held). */
  sweep(): void {
    const now = Date.now();
    for (const [k, v] of this.tokens) if (v.expiresAt <= now) this.tokens.delete(k);
  }

  /** Stops the sweeper and forgets every token. */
  close(): void {
    clearInterval(this.sweeper);
    this.tokens.clear();
  }
}
