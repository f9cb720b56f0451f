import { spawn } from 'node:child_process';

/** Options for one run of an external command. */
export interface CommandOptions {
  /** Kill the command (SIGKILL) after this many milliseconds; defaults to 60 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Extra environment variables, merged over `process.env`. */
  env?: Record<string, string>;
  cwd?: string;
  input?: string | Buffer;
}

/** What a command printed; stdout stays bytes because manifests must be hashed exactly. */
export interface CommandResult {
  stdout: Buffer;
  stderr: string;
}

/** Thrown when a command exits non-zero, is killed, or times out; carries its stderr. */
export class CommandError extends Error {
  override readonly name = 'CommandError';

  constructor(
    message: string,
    readonly command: string,
    readonly exitCode: number | null,
    readonly stdout: Buffer,
    readonly stderr: string,
  ) {
    super(message);
  }
}

const DEFAULT_TIMEOUT_MS = 60_000;

function quote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

/** Runs `file` with `args` (no shell) and resolves with its output, rejecting with a CommandError on failure. */
export async function runCommand(file: string, args: string[], opts: CommandOptions = {}): Promise<CommandResult> {
  const commandLine = [file, ...args].map(quote).join(' ');
  opts.signal?.throwIfAborted();
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      cwd: opts.cwd,
      env: { ...process.env, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let killedBecause: string | undefined;
    const kill = (why: string): void => {
      killedBecause ??= why;
      child.kill('SIGKILL');
    };
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const timer = setTimeout(() => kill(`timed out after ${timeoutMs} ms`), timeoutMs);
    const onAbort = (): void => kill('aborted');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    // An EPIPE on stdin (the command exited without reading it) is reported through 'close' instead.
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input);
    child.once('error', (error) => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      reject(new CommandError(`${commandLine}: ${error.message}`, commandLine, null, Buffer.alloc(0), ''));
    });
    child.once('close', (code, signalName) => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      const stdout = Buffer.concat(out);
      const stderr = Buffer.concat(err).toString('utf8');
      if (code === 0 && killedBecause === undefined) {
        resolve({ stdout, stderr });
        return;
      }
      const how = killedBecause ?? (code === null ? `killed by ${signalName ?? 'a signal'}` : `exited with ${code}`);
      reject(new CommandError(`${commandLine} ${how}: ${stderr.trim()}`, commandLine, code, stdout, stderr));
    });
  });
}
