import { describe, expect, it } from 'vitest';

describe('the token service', () => {
  const identity = { kind: 'credential' as const, credential: { username: 'u', password: 'p' }, hash: 'ab' };
  const target = { registry: 'r', repository: 'a' };

  it('resolves a token only within its scope and lifetime, and forgets all of them when closed', async () => {
    const { TokenService } = await import('../../../src/policy/tokens.js');
    let now = 1_000_000;
    const tokens = new TokenService(20_000, { now: () => now });
    const first = tokens.issue(identity, target);
    expect(first.expiresInS).toBe(20);
    expect(tokens.resolve(first.token, target)).toEqual(identity);
    expect(tokens.resolve(first.token, undefined)).toEqual(identity);
    expect(tokens.resolve(first.token, { registry: 'r', repository: 'b' })).toBeUndefined();
    expect(tokens.resolve(first.token, { registry: 'q', repository: 'a' })).toBeUndefined();
    const ping = tokens.issue({ kind: 'anonymous' }, undefined).token;
    expect(tokens.resolve(ping, undefined)).toEqual({ kind: 'anonymous' });
    expect(tokens.resolve(ping, target)).toBeUndefined();
    now += 20_000;
    expect(tokens.resolve(first.token, target)).toBeUndefined();
    const second = tokens.issue(identity, target).token;
    tokens.close();
    expect(tokens.resolve(second, target)).toBeUndefined();
  });

  it('accepts no forged, altered or foreign token, and never puts the credential in the token readably', async () => {
    const { TokenService } = await import('../../../src/policy/tokens.js');
    const tokens = new TokenService(60_000);
    const other = new TokenService(60_000);
    const token = tokens.issue({ kind: 'credential', credential: { username: 'tenant', password: 'sekr1t-pw' }, hash: 'cd' }, target).token;
    const raw = Buffer.from(token, 'base64url');
    expect(raw.toString('latin1')).not.toMatch(/tenant|sekr1t/);
    for (let i = 0; i < raw.length; i += 7) {
      const flipped = Buffer.from(raw);
      flipped[i] = (flipped[i] ?? 0) ^ 1;
      expect(tokens.resolve(flipped.toString('base64url'), target)).toBeUndefined();
    }
    for (const junk of ['', 'x', 'a'.repeat(100_000), raw.subarray(0, 20).toString('base64url')]) expect(tokens.resolve(junk, target)).toBeUndefined();
    expect(other.resolve(token, target)).toBeUndefined();
    tokens.close();
    other.close();
  });

  it("keeps a tenant's token through a flood of 100,500 anonymous and 100,500 made-up-credential tokens", async () => {
    const { TokenService } = await import('../../../src/policy/tokens.js');
    const tokens = new TokenService(300_000);
    const tenant = tokens.issue(identity, target).token;
    for (let i = 0; i < 100_500; i++) tokens.issue({ kind: 'anonymous' }, { registry: 'r', repository: `flood/${i}` });
    expect(tokens.resolve(tenant, target)).toEqual(identity);
    for (let i = 0; i < 100_500; i++) tokens.issue({ kind: 'credential', credential: { username: `u${i}`, password: 'x' }, hash: 'ef' }, target);
    expect(tokens.resolve(tenant, target)).toEqual(identity);
    tokens.close();
  });
});
