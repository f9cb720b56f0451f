import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/** The header that carries a peer request's signature. */
export const PEER_SIGNATURE_HEADER = 'x-registry-cache-peer';

/** Why a peer request's signature was refused (or `ok`). */
export type SignatureCheck = 'ok' | 'missing' | 'malformed' | 'bad-signature' | 'expired' | 'replayed';

/** What a signature covers: a peer request is authentic for one method, path and range only. */
export interface SignedRequest {
  method: string;
  /** Path and query as sent, e.g. `/peer/v1/blobs/sha256:…`. */
  path: string;
  range?: string | undefined;
}

const VERSION = 'v1';
const FORMAT = /^v1 t=(\d{1,16}) n=([0-9a-f]{32}) s=([0-9a-f]{64})$/;

/**
 * HMAC-SHA-256 signatures for requests between registry-cache nodes, keyed with the cluster's peer secret. A
 * signature is valid for `maxAgeMs` either side of the receiver's clock and once only (its nonce is remembered for
 * that long), so a captured request cannot be replayed or pointed at another blob.
 */
export class PeerSigner {
  private readonly key: Buffer;
  private readonly seen = new Map<string, number>();
  private readonly maxAgeMs: number;
  private readonly now: () => number;

  constructor(secret: Buffer | string, options: { maxAgeMs?: number; now?: () => number } = {}) {
    this.key = Buffer.isBuffer(secret) ? secret : Buffer.from(secret, 'utf8');
    if (this.key.length < 16) throw new Error('the peer secret must be at least 16 bytes');
    this.maxAgeMs = options.maxAgeMs ?? 30_000;
    this.now = options.now ?? Date.now;
  }

  /** The header value that authenticates this request. */
  sign(request: SignedRequest): string {
    const t = String(this.now());
    const nonce = randomBytes(16).toString('hex');
    return `${VERSION} t=${t} n=${nonce} s=${this.mac(request, t, nonce)}`;
  }

  /** Checks a received request's header; a valid one is spent (a second use is `replayed`). */
  verify(request: SignedRequest, header: string | undefined): SignatureCheck {
    if (header === undefined || header === '') return 'missing';
    const m = FORMAT.exec(header);
    if (!m) return 'malformed';
    const [, t = '', nonce = '', given = ''] = m;
    const expected = Buffer.from(this.mac(request, t, nonce), 'hex');
    if (!timingSafeEqual(expected, Buffer.from(given, 'hex'))) return 'bad-signature';
    const now = this.now();
    if (Math.abs(now - Number(t)) > this.maxAgeMs) return 'expired';
    this.sweep(now);
    if (this.seen.has(nonce)) return 'replayed';
    this.seen.set(nonce, Number(t) + this.maxAgeMs);
    return 'ok';
  }

  private mac(request: SignedRequest, t: string, nonce: string): string {
    const text = [VERSION, request.method.toUpperCase(), request.path, request.range ?? '', t, nonce].join('\n');
    return createHmac('sha256', this.key).update(text).digest('hex');
  }

  /** Forgets nonces whose signatures have expired anyway (insertion order is close to expiry order). */
  private sweep(now: number): void {
    // Usually the oldest entries expire first; a large map gets a full pass, so one future-dated signature cannot
    // hold back the sweep of everything behind it.
    const full = this.seen.size > 10_000;
    for (const [nonce, expires] of this.seen) {
      if (expires >= now) {
        if (full) continue;
        break;
      }
      this.seen.delete(nonce);
    }
  }
}
