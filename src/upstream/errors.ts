import { OciError, isOciError, type OciErrorCode } from '../oci/errors.js';

/** What an upstream request was for; picks the *_UNKNOWN code of a 404. */
export type UpstreamSubject = 'manifest' | 'blob' | 'tags' | 'referrers' | 'base';

const UNKNOWN_CODE: Readonly<Record<UpstreamSubject, OciErrorCode>> = {
  manifest: 'MANIFEST_UNKNOWN',
  blob: 'BLOB_UNKNOWN',
  tags: 'NAME_UNKNOWN',
  referrers: 'MANIFEST_UNKNOWN',
  base: 'NAME_UNKNOWN',
};

/** Maps a non-success upstream status to the OCI error the client sees. */
export function errorForUpstreamStatus(status: number, subject: UpstreamSubject, registry: string, retryAfter?: string): OciError {
  const detail = { registry, upstreamStatus: status };
  if (status === 404) return new OciError(UNKNOWN_CODE[subject], `${subject} unknown to upstream ${registry}`, { detail });
  if (status === 401) return new OciError('UNAUTHORIZED', `upstream ${registry} requires authentication`, { detail });
  if (status === 403) return new OciError('DENIED', `upstream ${registry} denied access`, { detail });
  if (status === 429) {
    const headers: Record<string, string> = {};
    if (retryAfter) headers['retry-after'] = retryAfter;
    return new OciError('TOOMANYREQUESTS', `upstream ${registry} is rate limiting`, { detail, headers });
  }
  if (status >= 500) return new OciError('UNAVAILABLE', `upstream ${registry} failed with ${status}`, { status: 502, detail });
  return new OciError('UNKNOWN', `upstream ${registry} answered ${status}`, { status: 502, detail });
}

const TIMEOUT_CODES = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT', 'ABORT_ERR']);
const UNREACHABLE_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ECONNRESET',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'CERT_HAS_EXPIRED',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** Maps a transport failure (by `err.code`/name, not class) to 503 (unreachable) or 504 (timed out). */
export function errorForTransportFailure(err: unknown, registry: string): OciError {
  const e = err as { code?: unknown; name?: unknown; cause?: { code?: unknown } };
  const code = typeof e.code === 'string' ? e.code : typeof e.cause?.code === 'string' ? e.cause.code : undefined;
  const detail = { registry, reason: code ?? (typeof e.name === 'string' ? e.name : 'error') };
  if ((code && TIMEOUT_CODES.has(code)) || e.name === 'TimeoutError' || e.name === 'AbortError') {
    return new OciError('UNAVAILABLE', `upstream ${registry} timed out`, { status: 504, detail, cause: err });
  }
  if (code && UNREACHABLE_CODES.has(code)) {
    return new OciError('UNAVAILABLE', `upstream ${registry} is unreachable`, { status: 503, detail, cause: err });
  }
  return new OciError('UNAVAILABLE', `upstream ${registry} request failed`, { status: 502, detail, cause: err });
}

/**
 * Maps a failure while reading an upstream body, so it answers and counts for back-off like any upstream failure: a
 * stall is a timeout (504); a reset, close or Content-Length mismatch is a broken answer from a reachable upstream
 * (502). An OciError (ours: size, digest, idle limit) passes through.
 */
export function errorForBodyFailure(err: unknown, registry: string): OciError {
  if (isOciError(err)) return err;
  const mapped = errorForTransportFailure(err, registry);
  if (mapped.status === 504) return mapped;
  return new OciError('UNAVAILABLE', `upstream ${registry} broke off its answer`, { status: 502, detail: mapped.detail, cause: err });
}
