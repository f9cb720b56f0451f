import { readFileSync } from 'node:fs';

/** Resident memory of one process over an interval. */
export interface RssPeak {
  /** Largest VmRSS seen by sampling, in bytes. */
  sampledPeakBytes: number;
  /** VmHWM at the end: the kernel's own high-water mark since the process started, in bytes. */
  highWaterMarkBytes: number;
  samples: number;
}

function readStatusKb(pid: number, field: 'VmRSS' | 'VmHWM'): number | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    // The process may have exited between two samples.
    return undefined;
  }
}

/**
 * Samples /proc/PID/status VmRSS every `intervalMs` until stop(). A synchronous read keeps each sample cheap and
 * ordered; a busy event loop delays samples, which VmHWM (read at the end) makes up for.
 */
export function sampleRss(pid: number, intervalMs = 50): { stop(): RssPeak } {
  let peak = readStatusKb(pid, 'VmRSS') ?? 0;
  let samples = 1;
  const timer = setInterval(() => {
    const rss = readStatusKb(pid, 'VmRSS');
    if (rss !== undefined) {
      peak = Math.max(peak, rss);
      samples++;
    }
  }, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      const last = readStatusKb(pid, 'VmRSS');
      if (last !== undefined) peak = Math.max(peak, last);
      return { sampledPeakBytes: peak, highWaterMarkBytes: readStatusKb(pid, 'VmHWM') ?? peak, samples };
    },
  };
}
