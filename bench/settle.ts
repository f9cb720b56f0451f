import { loadavg } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { BUSY_LOAD } from './report.js';

/** How `settle` waits: the defaults are the machine's load average and real time; tests pass their own. */
export interface SettleOptions {
  log: (line: string) => void;
  /** True once the run is interrupted: stop waiting. */
  stop?: () => boolean;
  /** The 1-minute load average now. */
  load?: () => number;
  wait?: (ms: number) => Promise<unknown>;
  /** Longest wait; a machine still busy after it is reported busy by the caller. */
  maxMs?: number;
  pollMs?: number;
}

/**
 * Waits until the 1-minute load average is below BUSY_LOAD (polling), at most `maxMs` (150 s). The previous
 * scenario's own work lingers in that average for a minute or more; without the wait the bench flags itself busy.
 * Returns the seconds waited.
 */
export async function settle(options: SettleOptions): Promise<number> {
  const load = options.load ?? ((): number => loadavg()[0] ?? 0);
  const wait = options.wait ?? sleep;
  const maxMs = options.maxMs ?? 150_000;
  const pollMs = options.pollMs ?? 5_000;
  const first = load();
  if (first < BUSY_LOAD) return 0;
  let waited = 0;
  let now = first;
  while (!options.stop?.() && waited < maxMs && now >= BUSY_LOAD) {
    await wait(pollMs);
    waited += pollMs;
    now = load();
  }
  options.log(`  waited ${(waited / 1000).toFixed(0)} s for the load average to settle: ${first.toFixed(2)} -> ${now.toFixed(2)}`);
  return waited / 1000;
}
