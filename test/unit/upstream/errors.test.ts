import { describe, expect, it } from 'vitest';
import { errorForBodyFailure, errorForTransportFailure, errorForUpstreamStatus } from '../../../src/upstream/errors.js';

describe('upstream errors', () => {
  it('maps upstream statuses and transport failures', () => {
    expect(errorForUpstreamStatus(404, 'manifest', 'r').code).toBe('MANIFEST_UNKNOWN');
    expect(errorForUpstreamStatus(404, 'blob', 'r').code).toBe('BLOB_UNKNOWN');
    expect(errorForUpstreamStatus(401, 'blob', 'r').code).toBe('UNAUTHORIZED');
    expect(errorForUpstreamStatus(403, 'blob', 'r').code).toBe('DENIED');
    const limited = errorForUpstreamStatus(429, 'blob', 'r', '30');
    expect([limited.code, limited.status, limited.headers['retry-after']]).toEqual(['TOOMANYREQUESTS', 429, '30']);
    expect(errorForUpstreamStatus(500, 'blob', 'r').status).toBe(502);
    expect(errorForTransportFailure(Object.assign(new Error('x'), { code: 'ECONNREFUSED' }), 'r').status).toBe(503);
    expect(errorForTransportFailure(Object.assign(new Error('x'), { code: 'ENOTFOUND' }), 'r').status).toBe(503);
    expect(errorForTransportFailure(Object.assign(new Error('x'), { code: 'UND_ERR_HEADERS_TIMEOUT' }), 'r').status).toBe(504);
  });

  it('classifies transport failures by what went wrong, not by the error class name', () => {
    const classOf = (err: unknown, context: Parameters<typeof errorForTransportFailure>[1] = 'r') => {
      const e = errorForTransportFailure(err, context);
      return [(e.detail as { class: string }).class, e.status, e.message];
    };
    // A cancelled request is no timeout (undici's RequestAbortedError and a bare AbortSignal share the name AbortError).
    const cancelled = new AbortController();
    cancelled.abort();
    expect(classOf(cancelled.signal.reason)).toEqual(['aborted', 503, 'request to upstream r was cancelled']);
    expect(classOf(new DOMException('The operation was aborted due to timeout', 'TimeoutError'))).toEqual(['timeout', 504, 'upstream r timed out before the fill deadline (fillTimeout)']);
    // undici's forward (non-tunnel) proxy path reports a 407 as an invalid-argument error.
    const forward = Object.assign(new Error('Proxy Authentication Required (407)'), { name: 'InvalidArgumentError', code: 'UND_ERR_INVALID_ARG' });
    expect(classOf(forward, { registry: 'r', environmentProxy: true })[2]).toBe(
      'proxy authentication failed for upstream r: the egress proxy from HTTPS_PROXY/HTTP_PROXY answered 407 to CONNECT; check the user and password in HTTPS_PROXY/HTTP_PROXY and NO_PROXY',
    );
    // What a Go registry sends for a certificate it does not accept (OpenSSL's error for TLS alert 42).
    const badCert = Object.assign(new Error('ssl3_read_bytes:sslv3 alert bad certificate:...:SSL alert number 42\n'), { code: 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE' });
    expect(classOf(badCert, { registry: 'r', clientCert: true })[2]).toMatch(/^upstream r rejected the client certificate \(TLS alert: bad certificate\); check registries\.r\.clientCert/);
    // A close before any response byte hints at a client certificate only over TLS.
    const closed = Object.assign(new Error('other side closed'), { name: 'SocketError', code: 'UND_ERR_SOCKET', socket: { bytesRead: 0 } });
    expect(classOf(closed, { registry: 'r', url: new URL('https://r/v2/') })[0]).toBe('client-cert');
    expect(classOf(closed, { registry: 'r', url: new URL('http://r/v2/') })).toEqual(['unreachable', 503, 'upstream r is unreachable (UND_ERR_SOCKET)']);
    expect(classOf({ ...closed, socket: { bytesRead: 512 } }, { registry: 'r', url: new URL('https://r/v2/') })[0]).toBe('unreachable');
    // After the headers, the same table: a stall stays a timeout, anything else is a broken answer.
    const reset = errorForBodyFailure(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }), 'r');
    expect([(reset.detail as { class: string }).class, reset.status, reset.message]).toEqual(['body-broken', 502, 'upstream r broke off its answer (ECONNRESET)']);
    const stalled = errorForBodyFailure(Object.assign(new Error('Body Timeout Error'), { code: 'UND_ERR_BODY_TIMEOUT' }), 'r');
    expect([(stalled.detail as { class: string }).class, stalled.status]).toEqual(['timeout', 504]);
    // undici wraps a proxy that hangs up in ProxyConnectionError: the proxy is named, not the registry.
    const hungUp = Object.assign(new Error('Proxy Connection failed'), { code: 'UND_ERR_PRX_CONN', cause: Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }) });
    expect(classOf(hungUp, { registry: 'r', proxy: new URL('http://u:secret@p:3128') })).toEqual([
      'proxy-refused',
      502,
      'proxy http://p:3128 closed the connection instead of opening a tunnel to upstream r; check registries.r.proxy',
    ]);
  });
});
