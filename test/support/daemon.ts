import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';

/** A long-running child process whose stdout and stderr go to a log file. */
export interface Daemon {
  readonly pid: number;
  readonly child: ChildProcess;
  readonly logFile: string;
  /** Whether the process has exited (for any reason). */
  exited(): boolean;
  /** Reads everything the process has logged so far. */
  readLog(): Promise<string>;
  /** Sends SIGTERM, then SIGKILL after `graceMs`, and resolves once the process is gone. */
  stop(graceMs?: number): Promise<void>;
}

/** Starts `file args` with its output appended to `logFile`. */
export async function startDaemon(file: string, args: string[], logFile: string, env?: Record<string, string>): Promise<Daemon> {
  const child = spawn(file, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  // Two O_APPEND streams into one file interleave whole writes, which is all a debug log needs.
  const logged = Promise.all([
    pipeline(child.stdout, createWriteStream(logFile, { flags: 'a' })),
    pipeline(child.stderr, createWriteStream(logFile, { flags: 'a' })),
  ]).catch(() => undefined);
  let hasExited = false;
  const closed = new Promise<void>((resolve) => {
    child.once('close', () => {
      hasExited = true;
      void logged.then(() => resolve());
    });
  });
  await new Promise<void>((resolve, reject) => {
    const onSpawn = (): void => {
      child.off('error', onError);
      resolve();
    };
    const onError = (error: Error): void => {
      child.off('spawn', onSpawn);
      reject(new Error(`could not start ${file}: ${error.message}`));
    };
    child.once('spawn', onSpawn);
    child.once('error', onError);
  });
  // Later errors (a failed kill) must not crash the test process; 'close' still reports the exit.
  child.on('error', () => undefined);
  if (child.pid === undefined) throw new Error(`could not start ${file}`);
  const pid = child.pid;
  return {
    pid,
    child,
    logFile,
    exited: () => hasExited,
    readLog: () => readFile(logFile, 'utf8'),
    async stop(graceMs = 5_000) {
      if (hasExited) return closed;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await closed;
      clearTimeout(timer);
    },
  };
}

/** Polls `probe` until it returns true, failing early with the daemon's log if it dies. */
export async function waitUntil(
  what: string,
  probe: () => Promise<boolean>,
  opts: { daemon?: Daemon; timeoutMs?: number; intervalMs?: number; signal?: AbortSignal } = {},
): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 20_000);
  for (;;) {
    opts.signal?.throwIfAborted();
    if (opts.daemon?.exited()) {
      throw new Error(`${what}: process exited early; log:\n${tail(await opts.daemon.readLog())}`);
    }
    if (await probe().catch(() => false)) return;
    if (Date.now() > deadline) {
      const log = opts.daemon ? `; log:\n${tail(await opts.daemon.readLog())}` : '';
      throw new Error(`${what}: timed out${log}`);
    }
    await sleep(opts.intervalMs ?? 50, undefined, { signal: opts.signal });
  }
}

/** The last `lines` lines of a log, for error messages that must stay readable. */
export function tail(text: string, lines = 40): string {
  return text.split('\n').slice(-lines).join('\n');
}
