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


/**
 * What went wrong on the way to an upstream, named for what the operator checks (not for the error's class): the
 * `class` of the error detail, the log line and `registry_cache_upstream_errors_total`.
 */
export type UpstreamFailureClass =
  | 'proxy-auth'
  | 'proxy-refused'
  | 'tls-unknown-ca'
  | 'tls-name-mismatch'
  | 'tls-expired'
  | 'tls-verify'
  | 'tls-handshake'
  | 'client-cert'
  | 'connect-refused'
  | 'dns'
  | 'unreachable'
  | 'timeout'
  | 'aborted'
  | 'body-broken'
  | 'failed';

/** Where a transport failure happened, and the settings that may be at fault. A bare string is just the registry. */
export interface TransportContext {
  /** The registry's configured host: the `<host>` of `registries.<host>.*`. */
  registry: string;
  /** The URL tried: its scheme and host name the name that failed to resolve or verify. */
  url?: URL;
  /** The explicit `registries.<host>.proxy` (shown without credentials). */
  proxy?: URL;
  /** Whether HTTPS_PROXY/HTTP_PROXY may carry the request (NO_PROXY is undici's to apply). */
  environmentProxy?: boolean;
  /** Whether `registries.<host>.clientCert` is set. */
  clientCert?: boolean;
}

/** The facts a failure's message is built from. */
interface Failure {
  class: UpstreamFailureClass;
  /** The low-level code (`ECONNREFUSED`, `UND_ERR_SOCKET`, `CERT_HAS_EXPIRED`), kept for logs and `detail.reason`. */
  code: string;
  /** The proxy's answer to CONNECT, when it refused the tunnel. */
  proxyStatus?: number;
  /** The TLS alert the registry sent (`certificate required`), or how it closed the connection. */
  tls?: { alert: string } | { closed: 'during' | 'right after' };
  /** The name that did not resolve, or the address that refused. */
  target?: string;
  /** Node's explanation of a name mismatch (which names the certificate carries). */
  reason?: string;
}

const proxyLabel = (c: TransportContext): string => (c.proxy ? `proxy ${c.proxy.protocol}//${c.proxy.host}` : 'the egress proxy from HTTPS_PROXY/HTTP_PROXY');
const proxyKey = (c: TransportContext): string => (c.proxy ? `registries.${c.registry}.proxy` : 'HTTPS_PROXY/HTTP_PROXY and NO_PROXY');
const viaProxy = (c: TransportContext): boolean => c.proxy !== undefined || c.environmentProxy === true;
const throughProxy = (c: TransportContext): string => (viaProxy(c) ? ` (through ${proxyLabel(c)})` : '');
const clientCertFix = (c: TransportContext): string =>
  c.clientCert
    ? `check registries.${c.registry}.clientCert and clientKey, and that the registry trusts the CA that issued them`
    : `set registries.${c.registry}.clientCert and clientKey`;

/** What was under way when each kind of timeout fired, and the key that sets it. */
const TIMEOUT_PHASES: Readonly<Record<string, { phase: string; key?: string }>> = {
  UND_ERR_CONNECT_TIMEOUT: { phase: 'connecting', key: 'connectTimeout' },
  ETIMEDOUT: { phase: 'connecting' },
  UND_ERR_HEADERS_TIMEOUT: { phase: 'waiting for the response', key: 'requestTimeout' },
  UND_ERR_BODY_TIMEOUT: { phase: 'waiting for body bytes', key: 'idleTimeout' },
  TimeoutError: { phase: 'before the fill deadline (fillTimeout)' },
};

/**
 * One row per class: the status the client gets (502 a broken path to the upstream, 503 unreachable, 504 only a real
 * timeout) and a message that names the registry, the cause and the config key to look at.
 */
const TRANSPORT_FAILURES: Readonly<Record<UpstreamFailureClass, { status: number; message: (f: Failure, c: TransportContext) => string }>> = {
  'proxy-auth': {
    status: 502,
    message: (f, c) => `proxy authentication failed for upstream ${c.registry}: ${proxyLabel(c)} answered ${f.proxyStatus ?? 407} to CONNECT; check the user and password in ${proxyKey(c)}`,
  },
  'proxy-refused': {
    status: 502,
    message: (f, c) =>
      f.proxyStatus === undefined
        ? `${proxyLabel(c)} closed the connection instead of opening a tunnel to upstream ${c.registry}; check ${proxyKey(c)}`
        : f.proxyStatus < 500
          ? `proxy refused the tunnel to upstream ${c.registry}: ${proxyLabel(c)} answered ${f.proxyStatus} to CONNECT; check the proxy's rules for ${c.url?.host ?? c.registry} and ${proxyKey(c)}`
          : `proxy could not open a tunnel to upstream ${c.registry}: ${proxyLabel(c)} answered ${f.proxyStatus} to CONNECT`,
  },
  'tls-unknown-ca': {
    status: 502,
    message: (f, c) => `TLS verification of upstream ${c.registry} failed: its certificate is issued by an unknown CA (${f.code}); set registries.${c.registry}.ca to the CA that issued it`,
  },
  'tls-name-mismatch': {
    status: 502,
    message: (f, c) =>
      `TLS verification of upstream ${c.registry} failed: its certificate is not valid for the name ${c.url?.hostname ?? c.registry}${f.reason ? ` (${f.reason})` : ''}; check the host in registries.${c.registry}.url`,
  },
  'tls-expired': {
    status: 502,
    message: (_f, c) => `TLS verification of upstream ${c.registry} failed: its certificate has expired; the registry must renew it (or this node's clock is wrong)`,
  },
  'tls-verify': {
    status: 502,
    message: (f, c) => `TLS verification of upstream ${c.registry} failed (${f.code}); check registries.${c.registry}.ca`,
  },
  'tls-handshake': {
    status: 502,
    message: (f, c) =>
      `TLS handshake with upstream ${c.registry} failed (${f.tls && 'alert' in f.tls ? `TLS alert: ${f.tls.alert}` : f.code})` +
      (/WRONG_VERSION_NUMBER|PACKET_LENGTH_TOO_LONG|HTTP_REQUEST/.test(f.code) ? `; is registries.${c.registry}.url an https:// URL of a TLS port?` : ''),
  },
  'client-cert': {
    status: 502,
    message: (f, c) => {
      if (f.tls && 'alert' in f.tls) {
        const what = c.clientCert ? 'rejected the client certificate' : 'requires a client certificate';
        return `upstream ${c.registry} ${what} (TLS alert: ${f.tls.alert}); ${clientCertFix(c)}`;
      }
      const when = f.tls && 'closed' in f.tls ? f.tls.closed : 'right after';
      const what = c.clientCert ? 'probably rejected the client certificate' : 'probably requires a client certificate';
      return `upstream ${c.registry} closed the TLS connection ${when} the handshake without answering: it ${what}; ${clientCertFix(c)}`;
    },
  },
  'connect-refused': {
    status: 503,
    message: (f, c) =>
      c.proxy
        ? `${proxyLabel(c)} refused the connection (for upstream ${c.registry}); check ${proxyKey(c)}`
        : `upstream ${c.registry}${c.environmentProxy ? ` (or ${proxyLabel(c)})` : ''} refused the connection${f.target ? ` to ${f.target}` : ''}; is the registry listening at registries.${c.registry}.url?`,
  },
  dns: {
    status: 503,
    message: (f, c) =>
      c.proxy
        ? `the name of ${proxyLabel(c)} does not resolve (${f.code}); check ${proxyKey(c)} and this node's DNS`
        : `the name ${f.target ?? c.url?.hostname ?? c.registry} of upstream ${c.registry} does not resolve (${f.code}); check registries.${c.registry}.url and this node's DNS`,
  },
  unreachable: {
    status: 503,
    message: (f, c) => `upstream ${c.registry} is unreachable (${f.code})${throughProxy(c)}`,
  },
  timeout: {
    status: 504,
    message: (f, c) => {
      const t = TIMEOUT_PHASES[f.code];
      return `upstream ${c.registry} timed out${t ? ` ${t.phase}` : ''}${throughProxy(c)}${t?.key ? ` (registries.${c.registry}.${t.key})` : ''}`;
    },
  },
  aborted: {
    status: 503,
    message: (_f, c) => `request to upstream ${c.registry} was cancelled`,
  },
  // After the headers: a reset, a close or a Content-Length mismatch from an upstream that did answer.
  'body-broken': {
    status: 502,
    message: (f, c) => `upstream ${c.registry} broke off its answer (${f.code})`,
  },
  failed: {
    status: 502,
    message: (f, c) => `request to upstream ${c.registry} failed (${f.code})${throughProxy(c)}`,
  },
};

/** The certificate checks of Node's TLS verification, by the check that failed. */
const UNKNOWN_ISSUER_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
]);
const CERT_VERIFY_CODES = /^(CERT_|UNABLE_TO_|INVALID_CA|PATH_LENGTH_EXCEEDED|INVALID_PURPOSE|CERT_REJECTED|HOSTNAME_MISMATCH|ERR_TLS_CERT_)/;
/**
 * TLS alerts (RFC 8446 numbers) a server sends about the client's certificate: 40 is what TLS 1.2 servers send when
 * none came, 116 (certificate_required) TLS 1.3 servers, 42/48 a certificate they do not accept.
 */
const CLIENT_CERT_ALERTS: Readonly<Record<number, string>> = {
  40: 'handshake failure',
  42: 'bad certificate',
  43: 'unsupported certificate',
  44: 'certificate revoked',
  45: 'certificate expired',
  46: 'certificate unknown',
  48: 'unknown CA',
  49: 'access denied',
  116: 'certificate required',
};
const UNREACHABLE_CODES = new Set(['ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ENETDOWN', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);
const DNS_CODES = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EAI_FAIL', 'EAI_NONAME', 'EAI_NODATA']);

interface ErrorFields {
  code?: unknown;
  name?: unknown;
  message?: unknown;
  cause?: unknown;
  errors?: unknown;
  hostname?: unknown;
  address?: unknown;
  port?: unknown;
  reason?: unknown;
  /** undici's SocketError carries the socket's counters. */
  socket?: { bytesRead?: unknown };
}

const fields = (err: unknown): ErrorFields => (typeof err === 'object' && err !== null ? err : {}) as ErrorFields;

/** The error itself or, for a wrapper without a code (undici's proxy errors, happy-eyeballs' AggregateError), what it wraps. */
function coded(err: unknown): ErrorFields {
  const e = fields(err);
  if (typeof e.code === 'string' && !e.code.startsWith('UND_ERR_PRX')) return e;
  const inner: unknown = e.cause ?? (Array.isArray(e.errors) ? e.errors[0] : undefined);
  return typeof inner === 'object' && inner !== null ? coded(inner) : e;
}


/** Decides the class from what the error says happened: codes, the proxy's status, the TLS alert, the socket's counters. */
function classify(err: unknown, c: TransportContext): Failure {
  const outer = fields(err);
  const message = typeof outer.message === 'string' ? outer.message : '';
  // undici 8 rejects a non-200 CONNECT answer as RequestAbortedError (name AbortError): the status is only in the text.
  const proxy = /^Proxy response \((\d{3})\) !== 200/.exec(message) ?? /^Proxy Authentication Required \((407)\)/.exec(message);
  const outerCode = typeof outer.code === 'string' ? outer.code : undefined;
  if (proxy) {
    const proxyStatus = Number(proxy[1]);
    return { class: proxyStatus === 407 ? 'proxy-auth' : 'proxy-refused', code: outerCode ?? 'PROXY_STATUS', proxyStatus };
  }
  const e = coded(err);
  const name = typeof outer.name === 'string' ? outer.name : 'Error';
  const code = typeof e.code === 'string' ? e.code : (outerCode ?? name);
  if (outerCode === 'UND_ERR_PRX_CONN' && !(code in TIMEOUT_PHASES)) return { class: 'proxy-refused', code };
  if (code in TIMEOUT_PHASES || name === 'TimeoutError') return { class: 'timeout', code: code in TIMEOUT_PHASES ? code : 'TimeoutError' };
  if (code === 'UND_ERR_ABORTED' || code === 'ABORT_ERR' || name === 'AbortError') return { class: 'aborted', code };

  const alertNumber = /SSL alert number (\d+)/.exec(typeof e.message === 'string' ? e.message : '');
  if (alertNumber) {
    const n = Number(alertNumber[1]);
    const known = CLIENT_CERT_ALERTS[n];
    return known ? { class: 'client-cert', code, tls: { alert: known } } : { class: 'tls-handshake', code, tls: { alert: `number ${n}` } };
  }
  if (UNKNOWN_ISSUER_CODES.has(code)) return { class: 'tls-unknown-ca', code };
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return { class: 'tls-name-mismatch', code, ...(typeof e.reason === 'string' ? { reason: e.reason } : {}) };
  if (code === 'CERT_HAS_EXPIRED') return { class: 'tls-expired', code };
  if (CERT_VERIFY_CODES.test(code)) return { class: 'tls-verify', code };
  if (code.startsWith('ERR_SSL_')) return { class: 'tls-handshake', code };

  // A registry that wants a certificate it did not get (or does not trust) may just close: Node's TLS servers do,
  // without an alert. On TLS 1.2 that cuts the handshake; on 1.3 it comes after it, before any response byte.
  if (c.url?.protocol === 'https:') {
    if (code === 'ECONNRESET' && typeof e.message === 'string' && e.message.includes('before secure TLS connection was established')) {
      return { class: 'client-cert', code, tls: { closed: 'during' } };
    }
    if (code === 'UND_ERR_SOCKET' && e.socket?.bytesRead === 0) return { class: 'client-cert', code, tls: { closed: 'right after' } };
  }
  if (code === 'ECONNREFUSED') {
    return { class: 'connect-refused', code, ...(typeof e.address === 'string' ? { target: `${e.address}${typeof e.port === 'number' ? `:${e.port}` : ''}` } : {}) };
  }
  if (DNS_CODES.has(code)) return { class: 'dns', code, ...(typeof e.hostname === 'string' ? { target: e.hostname } : {}) };
  if (UNREACHABLE_CODES.has(code)) return { class: 'unreachable', code };
  return { class: 'failed', code };
}

/**
 * Maps a transport failure (no upstream answer) to the OciError the client sees, by what went wrong: the class and
 * the low-level code travel in `detail` (`class`, `reason`); the message names the registry, the cause and the key.
 */
export function errorForTransportFailure(err: unknown, context: string | TransportContext): OciError {
  const c = typeof context === 'string' ? { registry: context } : context;
  return failureError(classify(err, c), c, err);
}

/** The table's row for `f`, as the error the client sees. */
function failureError(f: Failure, c: TransportContext, err: unknown): OciError {
  const row = TRANSPORT_FAILURES[f.class];
  const detail = { registry: c.registry, class: f.class, reason: f.code, ...(f.proxyStatus === undefined ? {} : { proxyStatus: f.proxyStatus }) };
  return new OciError('UNAVAILABLE', row.message(f, c), { status: row.status, detail, cause: err });
}

/** The class and low-level code of an error made by errorForTransportFailure, for logs and metrics. */
export function transportFailureOf(err: unknown): { class: UpstreamFailureClass; code: string } | undefined {
  if (!isOciError(err)) return undefined;
  const d = err.detail as { class?: unknown; reason?: unknown } | undefined;
  if (typeof d?.class !== 'string' || !(d.class in TRANSPORT_FAILURES)) return undefined;
  return { class: d.class as UpstreamFailureClass, code: typeof d.reason === 'string' ? d.reason : 'unknown' };
}

/**
 * Maps a failure while reading an upstream body, so it answers and counts for back-off like any upstream failure: a
 * stall is a timeout (504); a reset, close or Content-Length mismatch is a broken answer from a reachable upstream
 * (502). An OciError (ours: size, digest, idle limit) passes through.
 */
export function errorForBodyFailure(err: unknown, registry: string): OciError {
  if (isOciError(err)) return err;
  const f = classify(err, { registry });
  return failureError(f.class === 'timeout' ? f : { class: 'body-broken', code: f.code }, { registry }, err);
}
