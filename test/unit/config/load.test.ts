import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, envNameFor, loadConfig } from '../../../src/config/load.js';

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

  it('takes a bracketed address of either family, as the DaemonSet writes "[$(HOST_IP)]:5001" for IPv4 and IPv6 nodes', () => {
    // Quoted: variables are read as YAML, where an unquoted [ starts a list.
    expect(loadConfig({ env: { REGISTRY_CACHE_METRICS_LISTEN: '"[10.1.2.3]:5001"' } }).metricsListen).toEqual({ host: '10.1.2.3', port: 5001 });
    expect(loadConfig({ env: { REGISTRY_CACHE_METRICS_LISTEN: '"[fd00::7]:5001"' } }).metricsListen).toEqual({ host: 'fd00::7', port: 5001 });
    expect(() => loadConfig({ env: { REGISTRY_CACHE_METRICS_LISTEN: '"[10.1.2.3]:70000"' } })).toThrow(ConfigError);
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

describe('pull limits in the configuration', () => {
  it('stops at start on invalid serializeImagePulls / maxParallelImagePulls combinations, naming both keys', () => {
    const fail = (overrides: Record<string, unknown>): string => {
      try {
        loadConfig({ env: {}, overrides });
      } catch (err) {
        if (err instanceof ConfigError) return err.key;
      }
      return 'accepted';
    };
    expect(fail({ serializeImagePulls: true, maxParallelImagePulls: 2 })).toBe('serializeImagePulls/maxParallelImagePulls');
    expect(fail({ serializeImagePulls: true, maxParallelImagePulls: null })).toBe('serializeImagePulls/maxParallelImagePulls');
    expect(fail({ maxParallelImagePulls: 0 })).toBe('maxParallelImagePulls');
    expect(loadConfig({ env: {}, overrides: { serializeImagePulls: true, maxParallelImagePulls: 1 } }).maxParallelImagePulls).toBe(1);
    expect(loadConfig({ env: {}, overrides: { serializeImagePulls: true } }).maxParallelImagePulls).toBe(1);
    expect(loadConfig({ env: {}, overrides: { maxParallelImagePulls: null } }).maxParallelImagePulls).toBeUndefined();
    expect(loadConfig({ env: {} }).maxParallelImagePulls).toBe(5);
  });

  it('serializeImagePulls: false without maxParallelImagePulls means no limit (the kubelet rule)', () => {
    expect(loadConfig({ env: {}, overrides: { serializeImagePulls: false } }).maxParallelImagePulls).toBeUndefined();
  });
});
