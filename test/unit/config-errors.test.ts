import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/load.js';

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

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
