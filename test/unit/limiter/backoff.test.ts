import { afterEach, describe, expect, it, vi } from 'vitest';
import { PullBackoff } from '../../../src/limiter/backoff.js';
import { OciError } from '../../../src/oci/errors.js';

describe('pull back-off', () => {
  afterEach(() => {
    vi.useRealTimers();
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
