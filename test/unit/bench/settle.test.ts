import { describe, expect, it } from 'vitest';
import { settle } from '../../../bench/settle.js';

/** A load average that reads `values` in turn (the last one sticks), and the waits asked for. */
function fake(values: number[]): { load: () => number; wait: (ms: number) => Promise<void>; waits: number[]; lines: string[] } {
  const waits: number[] = [];
  const lines: string[] = [];
  let i = 0;
  return {
    load: () => values[Math.min(i++, values.length - 1)] as number,
    wait: async (ms) => void waits.push(ms),
    waits,
    lines,
  };
}

describe('waiting for a quiet machine before a scenario', () => {
  it('starts at once on a quiet machine', async () => {
    const f = fake([0.4]);
    expect(await settle({ log: (l) => f.lines.push(l), load: f.load, wait: f.wait })).toBe(0);
    expect(f.waits).toEqual([]);
    expect(f.lines).toEqual([]);
  });

  it('polls until the load average falls below 1.5, and says how long it waited', async () => {
    const f = fake([3.2, 2.4, 1.7, 1.2]);
    expect(await settle({ log: (l) => f.lines.push(l), load: f.load, wait: f.wait })).toBe(15);
    expect(f.waits).toEqual([5000, 5000, 5000]);
    expect(f.lines).toEqual(['  waited 15 s for the load average to settle: 3.20 -> 1.20']);
  });

  it('gives up after its longest wait, and when the run is interrupted', async () => {
    const busy = fake([4]);
    expect(await settle({ log: (l) => busy.lines.push(l), load: busy.load, wait: busy.wait, maxMs: 20_000 })).toBe(20);
    expect(busy.waits).toHaveLength(4);
    const stopped = fake([4]);
    let polls = 0;
    await settle({ log: () => undefined, load: stopped.load, wait: stopped.wait, stop: () => polls++ >= 2 });
    expect(stopped.waits).toHaveLength(2);
  });
});
