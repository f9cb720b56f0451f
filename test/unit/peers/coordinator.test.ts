import { describe, expect, it } from 'vitest';
import { DigestCoordinator } from '../../../src/peers/coordinator.js';

const D = 'sha256:' + 'a'.repeat(64);
const everyone = (): boolean => true;

describe('digest coordinator', () => {
  it('gives the first claimant a lease and points every later claimant at it while it fills', () => {
    const c = new DigestCoordinator();
    expect(c.claim(D, 'n1', everyone)).toEqual({ kind: 'lease', ttlMs: 15_000 });
    for (const n of ['n2', 'n3', 'n4']) expect(c.claim(D, n, everyone)).toEqual({ kind: 'peer', source: 'n1' });
  });

  it('hands out a new lease when the filler stops renewing, and only the lease holder may renew', () => {
    let now = 0;
    const c = new DigestCoordinator({ leaseTtlMs: 1000, now: () => now });
    c.claim(D, 'n1', everyone);
    now = 900;
    expect(c.renew(D, 'n2')).toBe(false);
    expect(c.renew(D, 'n1')).toBe(true);
    now = 1800;
    expect(c.claim(D, 'n2', everyone)).toEqual({ kind: 'peer', source: 'n1' });
    now = 1901;
    expect(c.claim(D, 'n2', everyone)).toEqual({ kind: 'lease', ttlMs: 1000 });
    expect(c.renew(D, 'n1')).toBe(false);
  });

  it('makes a committed filler a holder and frees the digest after a failed fill', () => {
    const c = new DigestCoordinator();
    c.claim(D, 'n1', everyone);
    c.release(D, 'n1', 'failed');
    expect(c.claim(D, 'n2', everyone)).toEqual({ kind: 'lease', ttlMs: 15_000 });
    c.release(D, 'n2', 'committed');
    expect(c.claim(D, 'n3', everyone)).toEqual({ kind: 'peer', source: 'n2' });
    expect(c.stats()).toEqual({ leases: 0, digestsWithHolders: 1 });
  });

  it('skips sources that are not live or that the claimant failed to read from', () => {
    const c = new DigestCoordinator();
    c.addHolder(D, 'n1');
    c.addHolder(D, 'n2');
    expect(c.claim(D, 'n3', (m) => m !== 'n1')).toEqual({ kind: 'peer', source: 'n2' });
    expect(c.claim(D, 'n3', everyone, ['n1', 'n2'])).toEqual({ kind: 'lease', ttlMs: 15_000 });
    c.dropHolder(D, 'n2');
    expect(c.claim(D, 'n4', everyone)).toEqual({ kind: 'peer', source: 'n3' });
  });

  it('spreads readers over every complete copy', () => {
    const c = new DigestCoordinator();
    for (const n of ['n1', 'n2', 'n3']) c.addHolder(D, n);
    const seen = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const a = c.claim(D, 'n9', everyone);
      if (a.kind === 'peer') seen.add(a.source);
    }
    expect(seen).toEqual(new Set(['n1', 'n2', 'n3']));
  });

  it('remembers a bounded number of digests and sweeps expired leases', () => {
    let now = 0;
    const c = new DigestCoordinator({ maxDigests: 2, leaseTtlMs: 10, now: () => now });
    for (const i of [1, 2, 3]) c.addHolder(`sha256:${i}`, 'n1');
    expect(c.stats().digestsWithHolders).toBe(2);
    c.claim(D, 'n1', everyone);
    now = 11;
    c.sweep();
    expect(c.stats().leases).toBe(0);
  });

  it('points readers at a fill in progress only for the same registry; complete holders serve any', () => {
    const c = new DigestCoordinator();
    expect(c.claim(D, 'n1', everyone, [], 'x.example')).toMatchObject({ kind: 'lease' });
    // Another registry's unverified body could be a different one: that reader fills on its own.
    expect(c.claim(D, 'n2', everyone, [], 'y.example')).toMatchObject({ kind: 'lease' });
    expect(c.claim(D, 'n3', everyone, [], 'x.example')).toEqual({ kind: 'peer', source: 'n1' });
    c.release(D, 'n2', 'committed', 'y.example');
    expect(c.claim(D, 'n4', everyone, ['n1'], 'x.example')).toEqual({ kind: 'peer', source: 'n2' });
  });

  it('keeps at most 16 holders per digest, however many nodes claim to hold it', () => {
    const c = new DigestCoordinator();
    for (let i = 0; i < 1000; i++) c.addHolder(D, `n${i}`);
    const seen = new Set<string>();
    for (let i = 0; i < 500; i++) {
      const a = c.claim(D, 'me', everyone);
      if (a.kind === 'peer') seen.add(a.source);
    }
    expect(seen.size).toBe(16);
  });
});
