import { readFileSync } from 'node:fs';

/** Resident memory of one process over an interval. */
export interface RssPeak {
  /** Largest VmRSS seen by sampling, in bytes. */
  sampledPeakBytes: number;
  /** VmHWM at the end: the kernel's own high-water mark since the process started, in bytes. */
  highWaterMarkBytes: number;
  samples: number;
}

/**
 * Fields of /proc/PID/status that are given in kB, in bytes, from one read of the file (a field it lacks, or every
 * field once the process has exited, is undefined).
 */
export function readStatusBytes<F extends string>(pid: number, fields: readonly F[]): Partial<Record<F, number>> {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    // The process may have exited between two samples.
    return {};
  }
  const values: Partial<Record<F, number>> = {};
  for (const field of fields) {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
    if (m) values[field] = Number(m[1]) * 1024;
  }
  return values;
}

/** Clock ticks per second of /proc/PID/stat's utime and stime (USER_HZ, 100 on Linux). */
const USER_HZ = 100;

/**
 * CPU seconds (user + system) a process has used so far, or one of its threads (`tid`, e.g. the main thread's is the
 * pid), to 10 ms; NaN once it has exited.
 */
export function processCpuSeconds(pid: number, tid?: number): number {
  let stat: string;
  try {
    stat = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'utf8');
  } catch {
    return Number.NaN;
  }
  // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / USER_HZ;
}

/** One kB field of /proc/PID/status, in bytes. */
export function readStatusField(pid: number, field: 'VmRSS' | 'VmHWM'): number | undefined {
  return readStatusBytes(pid, [field])[field];
}

/**
 * Samples /proc/PID/status VmRSS every `intervalMs` until stop(). A synchronous read keeps each sample cheap and
 * ordered; a busy event loop delays samples, which VmHWM (read at the end) makes up for.
 */
export function sampleRss(pid: number, intervalMs = 50): { stop(): RssPeak } {
  let peak = readStatusField(pid, 'VmRSS') ?? 0;
  let samples = 1;
  const timer = setInterval(() => {
    const rss = readStatusField(pid, 'VmRSS');
    if (rss !== undefined) {
      peak = Math.max(peak, rss);
      samples++;
    }
  }, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      const last = readStatusField(pid, 'VmRSS');
      if (last !== undefined) peak = Math.max(peak, last);
      return { sampledPeakBytes: peak, highWaterMarkBytes: readStatusField(pid, 'VmHWM') ?? peak, samples };
    },
  };
}
