import { describe, expect, it } from 'vitest';
import { IdleCollector } from '../../../src/lifecycle/idle-memory.js';

/** A collector on a fake clock, counting collections. */
function setUp(quietMs = 1_000): { collector: IdleCollector; state: { requests: number; busy: boolean; collections: number; rss: number } } {
  // The process grows by 100 MB per burst unless a test says otherwise; a collection gives 90 of it back.
  const state = { requests: 0, busy: false, collections: 0, rss: 100e6 };
  const collector = new IdleCollector(
    {
      quietMs,
      activity: () => state.requests,
      busy: () => state.busy,
      collect: async () => {
        state.collections++;
        state.rss -= 90e6;
      },
      rss: () => state.rss,
      minGrowthBytes: 16e6,
    },
    0,
  );
  return { collector, state };
}

describe('giving memory back once the server is quiet', () => {
  it('collects once, quietMs after the last request, and not again until more work came', async () => {
    const { collector, state } = setUp();
    await collector.tick(5_000);
    expect(state.collections).toBe(0); // nothing happened yet: nothing to give back
    state.requests = 10;
    state.rss += 100e6;
    await collector.tick(5_100);
    await collector.tick(5_600);
    expect(state.collections).toBe(0);
    await collector.tick(6_100);
    expect(state.collections).toBe(1);
    await collector.tick(9_000);
    expect(state.collections).toBe(1);
    state.requests = 11;
    state.rss += 100e6;
    await collector.tick(9_500);
    await collector.tick(10_600);
    expect(state.collections).toBe(2);
  });

  it('waits while requests keep coming or a download runs', async () => {
    const { collector, state } = setUp();
    for (let t = 0; t < 10_000; t += 500) {
      state.requests++;
      state.rss += 10e6;
      await collector.tick(t);
    }
    expect(state.collections).toBe(0);
    state.busy = true;
    await collector.tick(20_000);
    await collector.tick(30_000);
    expect(state.collections).toBe(0);
    state.busy = false;
    await collector.tick(30_500);
    await collector.tick(31_000);
    expect(state.collections).toBe(1);
  });

  it('skips quiet spells after bursts that grew the process little (probes, scrapes), until their growth adds up', async () => {
    const { collector, state } = setUp();
    let t = 0;
    for (let probe = 1; probe <= 3; probe++) {
      state.requests++;
      state.rss += 5e6;
      await collector.tick((t += 100));
      await collector.tick((t += 2_000));
      expect(state.collections).toBe(0);
    }
    state.requests++;
    state.rss += 5e6; // 20 MB since the start: worth a collection
    await collector.tick((t += 100));
    await collector.tick((t += 2_000));
    expect(state.collections).toBe(1);
    // Measured from what the collection left.
    state.requests++;
    state.rss += 5e6;
    await collector.tick((t += 100));
    await collector.tick((t += 2_000));
    expect(state.collections).toBe(1);
  });

  it('does nothing without a collection to run (a process started without --expose-gc)', () => {
    const collector = new IdleCollector({ quietMs: 1_000, activity: () => 0, busy: () => false, collect: undefined });
    expect(collector.enabled).toBe(false);
  });
});
