import { describe, expect, it } from 'vitest';
import { ExternalMemoryGuard } from '../../../src/lifecycle/external-memory.js';

const MB = 1e6;

/** A guard over fake external memory; a collection frees `garbage` (what is not `live`) once released. */
function setUp(limitBytes = 40 * MB): {
  guard: ExternalMemoryGuard;
  state: { live: number; garbage: number; collections: number; finish: () => void };
} {
  const state = { live: 10 * MB, garbage: 0, collections: 0, finish: (): void => undefined };
  const guard = new ExternalMemoryGuard({
    limitBytes,
    external: () => state.live + state.garbage,
    collect: () => {
      state.collections++;
      return new Promise<void>((resolve) => {
        state.finish = (): void => {
          state.garbage = 0;
          resolve();
        };
      });
    },
  });
  return { guard, state };
}

/** Lets the guard's continuation after a finished collection run. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('keeping a download’s garbage from piling up outside the heap (ExternalMemoryGuard)', () => {
  it('collects once external memory grew by the limit, one collection at a time, then measures from what survived', async () => {
    const { guard, state } = setUp();
    state.garbage = 39 * MB;
    guard.check();
    expect(state.collections).toBe(0);
    state.garbage = 40 * MB;
    guard.check();
    expect(state.collections).toBe(1);
    // Still collecting: more garbage does not start another.
    state.garbage = 80 * MB;
    guard.check();
    expect(state.collections).toBe(1);
    state.live = 30 * MB; // readers took buffers of their own meanwhile: live, not garbage
    state.finish();
    await settle();
    // The next limit counts from the 30 MB that survived, not from the 10 MB at the start.
    state.garbage = 39 * MB;
    guard.check();
    expect(state.collections).toBe(1);
    state.garbage = 40 * MB;
    guard.check();
    expect(state.collections).toBe(2);
  });

  it('counts growth from the lowest level it saw, so a collection V8 ran by itself moves the line too', () => {
    const { guard, state } = setUp();
    state.garbage = 30 * MB;
    guard.check();
    // V8 collected on its own: 10 MB now.
    state.garbage = 0;
    guard.check();
    state.garbage = 39 * MB;
    guard.check();
    expect(state.collections).toBe(0);
  });

  it('does nothing in a process without a collection to run (started without --expose-gc)', () => {
    let reads = 0;
    const guard = new ExternalMemoryGuard({ limitBytes: 1, external: () => ++reads * MB, collect: undefined });
    guard.check();
    guard.check();
    expect(reads).toBe(1); // the start only
  });
});
