import type { RecordedRequest } from './fake-upstream.js';

/** A span of time during which something was transferring. */
export interface Window {
  start: number;
  end: number;
}

/** Per repository (one image each in these tests): when its first upstream GET started and its last one ended. */
export function imageWindows(requests: RecordedRequest[]): Map<string, Window> {
  const windows = new Map<string, Window>();
  for (const r of requests) {
    const repo = /^\/v2\/(.+)\/(manifests|blobs)\//.exec(r.path)?.[1];
    if (!repo || r.method !== 'GET') continue;
    const w = windows.get(repo) ?? { start: Number.POSITIVE_INFINITY, end: 0 };
    w.start = Math.min(w.start, r.startedAt);
    w.end = Math.max(w.end, r.endedAt ?? Number.POSITIVE_INFINITY);
    windows.set(repo, w);
  }
  return windows;
}

/** The most windows open at one instant. */
export function peakOverlap(windows: Iterable<Window>): number {
  const events = [...windows].flatMap((w) => [
    { t: w.start, d: 1 },
    { t: w.end, d: -1 },
  ]);
  events.sort((a, b) => a.t - b.t || a.d - b.d);
  let now = 0;
  let peak = 0;
  for (const e of events) peak = Math.max(peak, (now += e.d));
  return peak;
}
