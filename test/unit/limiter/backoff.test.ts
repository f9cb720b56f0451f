import { afterEach, describe, expect, it, vi } from 'vitest';
import { INITIAL_BACKOFF_MS, MAX_BACKOFF_MS, PullBackoff } from '../../../src/limiter/backoff.js';
import { OciError } from '../../../src/oci/errors.js';

describe('pull back-off', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('starts at 10 s, doubles to the 300 s cap, honours Retry-After as a floor, and resets on success', () => {
    vi.useFakeTimers();
    const backoff = new PullBackoff(() => Date.now());
    const notFound = new OciError('MANIFEST_UNKNOWN', 'nope');
    const delays: number[] = [];
    for (let i = 0; i < 8; i++) {
      backoff.failure('r/app:1', notFound);
      delays.push(backoff.delayFor('r/app:1') as number);
    }
    expect(delays).toEqual([10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000, 300_000]);
    expect(delays[0]).toBe(INITIAL_BACKOFF_MS);
    expect(delays.at(-1)).toBe(MAX_BACKOFF_MS);
    const answer = backoff.check('r/app:1');
    expect(answer?.code).toBe('MANIFEST_UNKNOWN');
    expect(answer?.headers['retry-after']).toBe('300');
    vi.advanceTimersByTime(299_000);
    expect(backoff.check('r/app:1')?.headers['retry-after']).toBe('1');
    vi.advanceTimersByTime(1_000);
    expect(backoff.check('r/app:1')).toBeUndefined();
    backoff.success('r/app:1');
    backoff.failure('r/app:1', notFound);
    expect(backoff.delayFor('r/app:1')).toBe(10_000);
    backoff.success('r/app:1');
    backoff.failure('r/app:1', new OciError('TOOMANYREQUESTS', 'slow down', { headers: { 'retry-after': '45' } }));
    expect(backoff.delayFor('r/app:1')).toBe(45_000);
  });

  it('forgets a back-off entry once it has been quiet for longer than twice the cap (kubelet GC), so entries do not pile up forever', () => {
    vi.useFakeTimers();
    const backoff = new PullBackoff(() => Date.now());
    // Every distinct missing reference a client asks for leaves an entry.
    for (let i = 0; i < 1000; i++) backoff.failure(`r/app:missing-${i}`, new OciError('MANIFEST_UNKNOWN', 'nope'));
    vi.advanceTimersByTime(24 * 3600_000);
    expect(backoff.delayFor('r/app:missing-0')).toBeUndefined();
    // And an old failure does not make a fresh one start at 20 s instead of 10 s.
    backoff.failure('r/app:missing-1', new OciError('MANIFEST_UNKNOWN', 'nope'));
    expect(backoff.delayFor('r/app:missing-1')).toBe(10_000);
  });
});
