import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseDuration } from '../../src/config/duration.js';
import { ConfigError, envNameFor, loadConfig } from '../../src/config/load.js';
import { parseRange } from '../../src/oci/range.js';
import { realmMayReceiveCredentials } from '../../src/upstream/auth.js';
import { parseChallenge } from '../../src/upstream/challenge.js';
import { errorForBodyFailure, errorForTransportFailure, errorForUpstreamStatus } from '../../src/upstream/errors.js';

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('configuration', () => {
  it('has working embedded defaults', () => {
    const c = loadConfig({ env: {} });
    expect(c.listen).toEqual({ host: '127.0.0.1', port: 5000 });
    expect(c.defaultRegistry).toBe('docker.io');
    expect([...c.registries.keys()]).toEqual(['docker.io', 'ghcr.io', 'quay.io', 'registry.k8s.io']);
    expect(c.tagTtlMs).toBe(0);
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('takes every key from REGISTRY_CACHE_* env vars', () => {
    expect(envNameFor('tagTtl')).toBe('REGISTRY_CACHE_TAG_TTL');
    const c = loadConfig({
      env: {
        REGISTRY_CACHE_LISTEN: '0.0.0.0:6000',
        REGISTRY_CACHE_TAG_TTL: '1m30s',
        REGISTRY_CACHE_REGISTRIES: '{"ghcr.io": {"url": "https://ghcr.io"}}',
        REGISTRY_CACHE_DEFAULT_REGISTRY: 'ghcr.io',
      },
    });
    expect(c.listen.port).toBe(6000);
    expect(c.tagTtlMs).toBe(90_000);
    expect([...c.registries.keys()]).toEqual(['ghcr.io']);
  });

  it('lets the configuration file win over the environment, and says which variable it ignored', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rc-precedence-'));
    try {
      const file = join(dir, 'config.yaml');
      writeFileSync(file, 'listen: 127.0.0.1:5000\n');
      const warnings: string[] = [];
      const c = loadConfig({ file, env: { REGISTRY_CACHE_LISTEN: '0.0.0.0:5000', REGISTRY_CACHE_TAG_TTL: '1m' }, onWarning: (m) => warnings.push(m) });
      expect(c.listen).toEqual({ host: '127.0.0.1', port: 5000 });
      // A variable still sets what the file leaves out.
      expect(c.tagTtlMs).toBe(60_000);
      expect(warnings).toEqual([expect.stringMatching(/^REGISTRY_CACHE_LISTEN is ignored: the configuration file sets listen/)]);
      expect(warnings.join()).not.toContain('0.0.0.0');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.each([
    [{ bogus: 1 }, 'bogus'],
    [{ listen: 'nope' }, 'listen'],
    [{ tagTtl: '5 minutes' }, 'tagTtl'],
    [{ registries: { 'ghcr.io': { url: 'ftp://ghcr.io' } }, defaultRegistry: 'ghcr.io' }, 'registries.ghcr.io.url'],
    [{ registries: { 'ghcr.io': { url: 'https://ghcr.io', urll: 'x' } }, defaultRegistry: 'ghcr.io' }, 'registries.ghcr.io.urll'],
    [{ defaultRegistry: 'example.com' }, 'defaultRegistry'],
    [{ logLevel: 'loud' }, 'logLevel'],
  ])('names the bad key in %j', (overrides, key) => {
    expect(configError(() => loadConfig({ env: {}, overrides })).key).toBe(key);
  });

  it('rejects unknown REGISTRY_CACHE_ variables by name', () => {
    expect(configError(() => loadConfig({ env: { REGISTRY_CACHE_TAGTTL: '1s' } })).key).toBe('REGISTRY_CACHE_TAGTTL');
  });

  it('parses Go-style durations', () => {
    expect(parseDuration('0s')).toBe(0);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('2h')).toBe(7_200_000);
    expect(parseDuration('1m30s')).toBe(90_000);
    expect(parseDuration('1x')).toBeUndefined();
    expect(parseDuration('')).toBeUndefined();
  });
});

describe('Range parsing', () => {
  it('handles single ranges and refuses unsatisfiable ones', () => {
    expect(parseRange('bytes=0-9', 100)).toEqual({ start: 0, end: 9 });
    expect(parseRange('bytes=90-', 100)).toEqual({ start: 90, end: 99 });
    expect(parseRange('bytes=-10', 100)).toEqual({ start: 90, end: 99 });
    expect(parseRange('bytes=50-1000', 100)).toEqual({ start: 50, end: 99 });
    expect(parseRange('bytes=0-1,5-6', 100)).toBeUndefined();
    expect(parseRange(undefined, 100)).toBeUndefined();
    expect(() => parseRange('bytes=100-', 100)).toThrow(/not satisfiable/);
  });
});

describe('upstream auth helpers', () => {
  it('parses Bearer and Basic challenges', () => {
    expect(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"')).toEqual({
      scheme: 'bearer',
      params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/busybox:pull' },
    });
    expect(parseChallenge('Basic realm=x')).toEqual({ scheme: 'basic', params: { realm: 'x' } });
    expect(parseChallenge(undefined)).toBeUndefined();
  });

  it('sends credentials only to token realms on the upstream registrable domain', () => {
    expect(realmMayReceiveCredentials(new URL('https://auth.docker.io/token'), new URL('https://registry-1.docker.io'))).toBe(true);
    expect(realmMayReceiveCredentials(new URL('https://evil.example/token'), new URL('https://registry-1.docker.io'))).toBe(false);
    expect(realmMayReceiveCredentials(new URL('http://auth.docker.io/token'), new URL('https://registry-1.docker.io'))).toBe(false);
    // Without a registrable domain (IP addresses, single-label names) only the same scheme, host and port qualify.
    expect(realmMayReceiveCredentials(new URL('http://127.0.0.1:2/token'), new URL('http://127.0.0.1:2'))).toBe(true);
    expect(realmMayReceiveCredentials(new URL('http://127.0.0.1:1/token'), new URL('http://127.0.0.1:2'))).toBe(false);
    expect(realmMayReceiveCredentials(new URL('https://10.0.0.5/token'), new URL('https://10.0.0.5:443'))).toBe(true);
    expect(realmMayReceiveCredentials(new URL('https://10.0.0.5:8443/token'), new URL('https://10.0.0.5'))).toBe(false);
    expect(realmMayReceiveCredentials(new URL('https://127.0.0.1:2/token'), new URL('http://127.0.0.1:2'))).toBe(false);
    expect(realmMayReceiveCredentials(new URL('http://[::1]:1/token'), new URL('http://[::1]:2'))).toBe(false);
    expect(realmMayReceiveCredentials(new URL('http://registry:1/token'), new URL('http://registry:2'))).toBe(false);
    expect(realmMayReceiveCredentials(new URL('http://localhost:1/token'), new URL('http://127.0.0.1:2'))).toBe(false);
  });

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

describe('configuration errors', () => {
  it('reports every invalid key of the schema at once, naming each', () => {
    const err = configError(() =>
      loadConfig({ env: {}, overrides: { logLevel: 'verbose', tagTtl: 30, listn: '127.0.0.1:5000', imagePullCredentialsVerificationPolicy: 'Always' } }),
    );
    expect(err.problems.map((p) => p.key).sort()).toEqual(['imagePullCredentialsVerificationPolicy', 'listn', 'logLevel', 'tagTtl']);
    for (const p of err.problems) expect(err.message).toContain(`${p.key}: ${p.message}`);
    expect(err.key).toBe(err.problems[0]?.key);
  });

  it('lists the valid values of a union instead of "Expected union value"', () => {
    const err = configError(() => loadConfig({ env: {}, overrides: { logLevel: 'verbose' } }));
    expect(err.message).not.toMatch(/union/i);
    expect(err.message).toContain('logLevel: "verbose" is not one of: fatal, error, warn, info, debug, trace, silent');
    const policy = configError(() => loadConfig({ env: {}, overrides: { imagePullCredentialsVerificationPolicy: 'Always' } }));
    expect(policy.message).toContain('NeverVerify, NeverVerifyPreloadedImages, NeverVerifyAllowListedImages, AlwaysVerify');
  });

  it('says which form is wanted when a number is given where a string is expected', () => {
    const ttl = configError(() => loadConfig({ env: {}, overrides: { tagTtl: 30 } }));
    expect(ttl.message).toContain('tagTtl: expected a string, got the number 30: a Go-style duration: 0s, 500ms, 1m30s, 2h (e.g. "30s")');
    const listen = configError(() => loadConfig({ env: {}, overrides: { listen: 5000 } }));
    expect(listen.message).toContain('listen: expected a string, got the number 5000: host:port, e.g. 127.0.0.1:5000');
    const env = configError(() => loadConfig({ env: { REGISTRY_CACHE_GC_INTERVAL: '60' } }));
    expect(env.message).toContain('gcInterval: expected a string, got the number 60');
  });

  it('reports every semantic problem and every unknown environment variable at once', () => {
    const err = configError(() =>
      loadConfig({
        env: { REGISTRY_CACHE_TAGTTL: '1s', REGISTRY_CACHE_LISTN: 'x' },
        overrides: { tokenTtl: '1s', listen: 'nope', imageGCHighThresholdPercent: 80, imageGCLowThresholdPercent: 90, gcInterval: 'soon' },
      }),
    );
    expect(err.problems.map((p) => p.key).sort()).toEqual([
      'REGISTRY_CACHE_LISTN',
      'REGISTRY_CACHE_TAGTTL',
      'gcInterval',
      'imageGCLowThresholdPercent',
      'listen',
      'tokenTtl',
    ]);
    expect(err.message.split('\n')).toHaveLength(7);
  });
});
