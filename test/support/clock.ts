import type { IncomingHttpHeaders } from 'node:http';
import { expect, vi } from 'vitest';

/**
 * Puts `Date` under the test's control, still moving with real time: back-off, tag TTLs and token expiry read it.
 * Timers, sockets and undici keep real time. Call before the cache starts (the back-off takes `Date.now` when it is
 * built) and undo with `vi.useRealTimers()` after the test.
 */
export function controlDate(): void {
  vi.useFakeTimers({ toFake: ['Date'], shouldAdvanceTime: true });
}

/**
 * Waits out the Retry-After of an answer, as a client does, by moving `Date` forward that far. The answer must carry
 * one: a test that waits out a back-off shows that there was one.
 */
export function waitOutRetryAfter(res: { headers: IncomingHttpHeaders }): void {
  const seconds = Number(res.headers['retry-after']);
  expect(seconds, 'Retry-After of the answer').toBeGreaterThan(0);
  vi.advanceTimersByTime(seconds * 1000);
}
