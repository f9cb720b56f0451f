import { describe, expect, it } from 'vitest';
import { coordinatorOf, rankMembers } from '../../../src/peers/ring.js';

const members = ['10.0.0.1:5002', '10.0.0.2:5002', '10.0.0.3:5002', '10.0.0.4:5002'];
const digests = Array.from({ length: 2000 }, (_, i) => `sha256:${i.toString(16).padStart(64, '0')}`);

describe('rendezvous ring', () => {
  it('ranks every member once and agrees with coordinatorOf whatever the member order', () => {
    for (const d of digests.slice(0, 50)) {
      const ranked = rankMembers(d, members);
      expect([...ranked].sort()).toEqual([...members].sort());
      expect(rankMembers(d, [...members].reverse())).toEqual(ranked);
      expect(coordinatorOf(d, members)).toBe(ranked[0]);
    }
    expect(coordinatorOf(digests[0] as string, [])).toBeUndefined();
  });

  it('spreads digests over members and moves only the departed member’s digests when one leaves', () => {
    const before = new Map(digests.map((d) => [d, coordinatorOf(d, members)]));
    const counts = new Map<string, number>();
    for (const owner of before.values()) counts.set(owner as string, (counts.get(owner as string) ?? 0) + 1);
    for (const m of members) expect(counts.get(m)).toBeGreaterThan(digests.length / members.length / 2);
    const left = members.filter((m) => m !== '10.0.0.3:5002');
    for (const d of digests) {
      const after = coordinatorOf(d, left);
      if (before.get(d) !== '10.0.0.3:5002') expect(after).toBe(before.get(d));
      else expect(after).not.toBe('10.0.0.3:5002');
    }
  });
});
