import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import type { Target } from '../oci/path.js';
import type { Credential } from '../upstream/credentials.js';

/** A registry credential as a client presents it (the server's token realm reads it from here). */
export type { Credential };

/** Who a client is, as far as the cache can tell. */
export type Identity =
  /** Sent no Authorization at all: may still hold credentials it shows only after a challenge. */
  | { kind: 'none' }
  /** Went through the challenge without credentials (anonymous token, or Basic with empty user and password). */
  | { kind: 'anonymous' }
  /** Presented a credential; `hash` is its keyed hash. */
  | { kind: 'credential'; credential: Credential; hash: string };

/** What a token carries, sealed: short keys keep tokens small. */
interface Sealed {
  /** Expiry, ms since the epoch. */
  e: number;
  /** Scope: registry and repository, absent for a scope-less (ping) token. */
  r?: string;
  n?: string;
  /** The credential and its keyed hash, absent for an anonymous token. */
  u?: string;
  p?: string;
  h?: string;
}

const IV_BYTES = 12;
const TAG_BYTES = 16;
/** Binds the ciphertext to this use of the key. */
const AAD = Buffer.from('registry-cache token v1');
/** Longer tokens are refused before any decryption (registry passwords such as ECR's are a few KiB). */
const MAX_TOKEN_CHARS = 16 * 1024;

/**
 * Short-lived tokens the cache issues from its own realm, stateless: each token is its own record, sealed with
 * AES-256-GCM under a key that exists only in this process's memory. The cache stores nothing per token, so a flood
 * of tokens (anonymous or with made-up credentials) costs one encryption each and can evict nobody's token; a client
 * holds its credential only sealed, readable by this process alone, and a restart (or `close`) revokes every token.
 */
export class TokenService {
  private key = randomBytes(32);
  /** GCM needs a unique IV per key: a random prefix and a counter (cheaper than 12 random bytes per token). */
  private readonly iv = randomBytes(IV_BYTES);
  private counter = 0n;
  private readonly now: () => number;

  constructor(
    readonly ttlMs: number,
    options: { now?: () => number } = {},
  ) {
    this.now = options.now ?? Date.now;
  }

  /** Issues a token bound to (identity, target). */
  issue(identity: Identity, target: Target | undefined): { token: string; expiresInS: number } {
    const sealed: Sealed = { e: this.now() + this.ttlMs };
    if (target) {
      sealed.r = target.registry;
      sealed.n = target.repository;
    }
    if (identity.kind === 'credential') {
      sealed.u = identity.credential.username;
      sealed.p = identity.credential.password;
      sealed.h = identity.hash;
    }
    this.counter += 1n;
    this.iv.writeBigUInt64BE(this.counter, IV_BYTES - 8);
    const iv = Buffer.from(this.iv);
    const cipher = createCipheriv('aes-256-gcm', this.key, iv);
    cipher.setAAD(AAD);
    const body = Buffer.concat([cipher.update(JSON.stringify(sealed), 'utf8'), cipher.final()]);
    const token = Buffer.concat([iv, body, cipher.getAuthTag()]).toString('base64url');
    return { token, expiresInS: Math.floor(this.ttlMs / 1000) };
  }

  /** The identity behind a live token, if `target` is within its scope; undefined for anything forged or expired. */
  resolve(token: string, target: Target | undefined): Identity | undefined {
    if (token.length > MAX_TOKEN_CHARS) return undefined;
    const raw = Buffer.from(token, 'base64url');
    if (raw.length <= IV_BYTES + TAG_BYTES) return undefined;
    let sealed: Sealed;
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.key, raw.subarray(0, IV_BYTES));
      decipher.setAAD(AAD);
      decipher.setAuthTag(raw.subarray(raw.length - TAG_BYTES));
      const plain = Buffer.concat([decipher.update(raw.subarray(IV_BYTES, raw.length - TAG_BYTES)), decipher.final()]);
      sealed = JSON.parse(plain.toString('utf8')) as Sealed;
    } catch {
      return undefined;
    }
    if (!(sealed.e > this.now())) return undefined;
    if (target && (sealed.r !== target.registry || sealed.n !== target.repository)) return undefined;
    if (sealed.u === undefined || sealed.p === undefined || sealed.h === undefined) return { kind: 'anonymous' };
    return { kind: 'credential', credential: { username: sealed.u, password: sealed.p }, hash: sealed.h };
  }

  /** Revokes every token issued so far (a new key). */
  close(): void {
    this.key = randomBytes(32);
    this.counter = 0n;
  }
}
