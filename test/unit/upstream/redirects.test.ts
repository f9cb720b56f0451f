import type { LookupFunction } from 'node:net';
import { describe, expect, it } from 'vitest';
import { loadConfig, type RegistryConfig } from '../../../src/config/load.js';
import { checkRedirectTarget, isPublicAddress, publicOnlyLookup, redirectExempt } from '../../../src/upstream/redirects.js';

/** A resolver that answers from a table (no DNS). */
function tableLookup(table: Record<string, string[]>): LookupFunction {
  return ((hostname: string, options: { all?: boolean }, cb: (...args: unknown[]) => void) => {
    const addresses = table[hostname];
    if (!addresses) return cb(Object.assign(new Error('not found'), { code: 'ENOTFOUND' }));
    const list = addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
    if (options?.all) cb(null, list);
    else cb(null, list[0]?.address, list[0]?.family);
  }) as unknown as LookupFunction;
}

function registry(extra: Record<string, unknown> = {}): RegistryConfig {
  const config = loadConfig({ env: {}, overrides: { registries: { 'reg.example.com': { url: 'https://reg.example.com', mirrors: ['http://10.0.0.9:5000'], ...extra } }, defaultRegistry: 'reg.example.com' } });
  return config.registries.get('reg.example.com') as RegistryConfig;
}

describe('redirect targets', () => {
  it('tells public addresses from loopback, link-local, private, reserved and embedded-IPv4 ones', () => {
    for (const a of ['8.8.8.8', '93.184.216.34', '2606:4700::6810:84e5', '172.32.0.1', '100.128.0.1']) expect(isPublicAddress(a), a).toBe(true);
    for (const a of ['127.0.0.1', '127.9.9.9', '0.0.0.0', '10.1.2.3', '172.16.0.1', '172.31.255.255', '192.168.1.1', '169.254.169.254', '100.64.0.1',
      '224.0.0.1', '255.255.255.255', '198.18.0.1', '::', '::1', '::ffff:127.0.0.1', '::ffff:7f00:1', '0:0:0:0:0:ffff:7f00:1', 'fe80::1', 'fd00::1', 'fc00::1', 'ff02::1',
      '64:ff9b::a00:1', '2002:7f00:1::', 'not-an-ip']) {
      expect(isPublicAddress(a), a).toBe(false);
    }
  });

  it("exempts the registry's own hosts (any port) and its allowlist, nothing else", () => {
    const reg = registry({ redirectAllowlist: ['*.cdn.corp', 'blobs.internal', '10.20.30.40'] });
    for (const h of ['reg.example.com', 'REG.example.com', '10.0.0.9', 'a.cdn.corp', 'x.y.cdn.corp', 'blobs.internal', '10.20.30.40']) expect(redirectExempt(reg, h), h).toBe(true);
    for (const h of ['cdn.corp', 'evilcdn.corp', 'example.com', 'x.reg.example.com', 'blobs.internal.evil', '127.0.0.1']) expect(redirectExempt(reg, h), h).toBe(false);
  });

  it('checks names after resolution: every address must be public', async () => {
    const reg = registry();
    const lookup = tableLookup({ 'cdn.public.test': ['93.184.216.34'], 'rebound.test': ['93.184.216.34', '127.0.0.1'], 'meta.test': ['169.254.169.254'] });
    await expect(checkRedirectTarget(reg, new URL('https://cdn.public.test/blob'), lookup)).resolves.toBeUndefined();
    await expect(checkRedirectTarget(reg, new URL('https://93.184.216.34/blob'), lookup)).resolves.toBeUndefined();
    await expect(checkRedirectTarget(reg, new URL('http://10.0.0.9:9000/blob'), lookup)).resolves.toBeUndefined();
    for (const target of ['https://rebound.test/', 'https://meta.test/', 'https://unknown.test/', 'https://user:pw@cdn.public.test/', 'ftp://cdn.public.test/']) {
      await expect(checkRedirectTarget(reg, new URL(target), lookup), target).rejects.toMatchObject({ code: 'UNAVAILABLE', status: 502 });
    }
  });

  it('refuses at connect time a name that resolves to a non-public address (no DNS rebinding past the check)', async () => {
    const lookup = publicOnlyLookup((h) => h === 'allowed.test', tableLookup({ 'cdn.test': ['127.0.0.1'], 'allowed.test': ['10.0.0.1'], 'ok.test': ['8.8.4.4'] }));
    const resolve = (host: string, all: boolean): Promise<unknown> =>
      new Promise((res, rej) => (lookup as unknown as (h: string, o: object, cb: (e: Error | null, a?: unknown) => void) => void)(host, { all }, (e, a) => (e ? rej(e) : res(a))));
    await expect(resolve('cdn.test', true)).rejects.toMatchObject({ code: 'ERR_REDIRECT_NOT_PUBLIC' });
    await expect(resolve('cdn.test', false)).rejects.toMatchObject({ code: 'ERR_REDIRECT_NOT_PUBLIC' });
    await expect(resolve('allowed.test', false)).resolves.toBe('10.0.0.1');
    await expect(resolve('ok.test', true)).resolves.toEqual([{ address: '8.8.4.4', family: 4 }]);
  });

  it('refuses allowlist entries that are not host names, *.domains or IP addresses', () => {
    expect(() => registry({ redirectAllowlist: ['https://cdn.corp/'] })).toThrow(/redirectAllowlist\[0\]/);
    expect(() => registry({ redirectAllowlist: ['cdn.corp', '*'] })).toThrow(/redirectAllowlist\[1\]/);
  });
});
