import { createHash, type Hash } from 'node:crypto';
import { OciError } from './errors.js';

/** Digest algorithms the cache verifies. */
export type DigestAlgorithm = 'sha256' | 'sha512';

/** A parsed, validated digest. */
export interface Digest {
  algorithm: DigestAlgorithm;
  hex: string;
  /** `algorithm:hex`, the canonical string. */
  value: string;
}

const HEX_LENGTH: Readonly<Record<DigestAlgorithm, number>> = { sha256: 64, sha512: 128 };
const DIGEST_RE = /^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/;

/** Parses `sha256:<64 hex>` or `sha512:<128 hex>`; anything else is DIGEST_INVALID (400). */
export function parseDigest(input: string): Digest {
  const match = DIGEST_RE.exec(input);
  if (!match) throw new OciError('DIGEST_INVALID', 'invalid digest', { detail: { digest: truncate(input) } });
  const algorithm = match[1] as string;
  const hex = match[2] as string;
  if (algorithm !== 'sha256' && algorithm !== 'sha512') {
    throw new OciError('DIGEST_INVALID', `unsupported digest algorithm ${truncate(algorithm)}`, { detail: { digest: truncate(input) } });
  }
  if (hex.length !== HEX_LENGTH[algorithm] || !/^[a-f0-9]+$/.test(hex)) {
    throw new OciError('DIGEST_INVALID', 'invalid digest', { detail: { digest: truncate(input) } });
  }
  return { algorithm, hex, value: `${algorithm}:${hex}` };
}

/** True when `input` is a syntactically valid, supported digest. */
export function isDigest(input: string): boolean {
  try {
    parseDigest(input);
    return true;
  } catch {
    return false;
  }
}

/** A hash object for the digest's algorithm. */
export function createDigester(algorithm: DigestAlgorithm): Hash {
  return createHash(algorithm);
}

/** Digest of an in-memory buffer (manifests only; blobs are hashed while streaming). */
export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
}

function truncate(s: string): string {
  return s.length > 200 ? `${s.slice(0, 200)}…` : s;
}
