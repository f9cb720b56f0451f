/** Go-style durations as kubelet configs use them: `0s`, `500ms`, `1m30s`, `2h`. */
const PART_RE = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
const UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Milliseconds in a duration string, or undefined if it is not one. A bare `0` is allowed. */
export function parseDuration(input: string): number | undefined {
  const s = input.trim();
  if (s === '0') return 0;
  let total = 0;
  let consumed = 0;
  for (const m of s.matchAll(PART_RE)) {
    if (m.index !== consumed) return undefined;
    total += Number(m[1]) * (UNIT_MS[m[2] as string] as number);
    consumed += m[0].length;
  }
  return consumed === s.length && consumed > 0 ? total : undefined;
}
