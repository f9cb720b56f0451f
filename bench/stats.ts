/** Median, min and max of a set of repeated measurements. */
export interface Summary {
  median: number;
  min: number;
  max: number;
  /** How many samples went in. */
  n: number;
}

/** Summarizes samples; an empty list gives NaN figures with n = 0 so a failed run still renders. */
export function summarize(samples: readonly number[]): Summary {
  if (samples.length === 0) return { median: Number.NaN, min: Number.NaN, max: Number.NaN, n: 0 };
  const sorted = [...samples].sort((a, b) => a - b);
  return { median: quantile(sorted, 0.5), min: sorted[0] as number, max: sorted[sorted.length - 1] as number, n: sorted.length };
}

/** The q-quantile (0..1) of an ascending array, interpolating between neighbours. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = sorted[lo] as number;
  const b = sorted[hi] as number;
  return a + (b - a) * (pos - lo);
}

/** p50 and p99 of latencies in milliseconds. */
export function latencyPercentiles(latenciesMs: readonly number[]): { p50: number; p99: number } {
  const sorted = [...latenciesMs].sort((a, b) => a - b);
  return { p50: quantile(sorted, 0.5), p99: quantile(sorted, 0.99) };
}

/** Seconds since `start` (a process.hrtime.bigint() reading). */
export function secondsSince(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9;
}
