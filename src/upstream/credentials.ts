import { createHash, randomBytes } from 'node:crypto';

/** A username/password pair presented to an upstream (Basic, or exchanged for a Bearer token). */
export interface Credential {
  username: string;
  password: string;
}

/** Process-local salt: in-memory cache keys must not be a reversible or cross-process-stable hash. */
const SALT = randomBytes(32);

/** An in-memory map key for a credential (never persisted or logged). */
export function credentialKey(credential: Credential | undefined): string {
  if (!credential) return 'anonymous';
  return createHash('sha256').update(SALT).update(credential.username).update('\0').update(credential.password).digest('base64url');
}

/** `Basic base64(user:pass)`. */
export function basicAuthorization(credential: Credential): string {
  return `Basic ${Buffer.from(`${credential.username}:${credential.password}`).toString('base64')}`;
}
