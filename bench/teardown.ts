/** One thing to undo at the end: stop a process, delete a directory. */
interface Step {
  what: string;
  run: () => Promise<void>;
}

/**
 * Everything the harness started or created, undone in reverse order exactly once: at the end, on an error, or on
 * Ctrl-C. Steps that fail are reported and the rest still run, so one stuck process never leaves the others behind.
 */
export class Teardown {
  private steps: Step[] = [];
  private running: Promise<void> | undefined;
  /** Synchronous last resorts (SIGKILL by PID, delete a directory) for an exit that skipped runAll. */
  private readonly lastResorts = new Map<string, () => void>();

  constructor() {
    process.once('exit', () => {
      for (const run of this.lastResorts.values()) {
        try {
          run();
        } catch {
          // Best effort: the process is exiting.
        }
      }
    });
  }

  /** Registers a synchronous undo for an abrupt exit (an uncaught error); `key` replaces an earlier one. */
  lastResort(key: string, run: (() => void) | undefined): void {
    if (run) this.lastResorts.set(key, run);
    else this.lastResorts.delete(key);
  }

  /** Whether runAll has begun: nothing new may be started from then on. */
  get closing(): boolean {
    return this.running !== undefined;
  }

  /**
   * Registers `run` and returns a function that unregisters it (for things stopped early on purpose). Once runAll has
   * begun (Ctrl-C), it refuses: the caller must undo what it just made itself.
   */
  add(what: string, run: () => Promise<void>): () => void {
    if (this.running) throw new Error(`interrupted: not starting ${what}`);
    const step = { what, run };
    this.steps.push(step);
    return () => {
      this.steps = this.steps.filter((s) => s !== step);
    };
  }

  /** Runs every registered step, newest first; later calls wait for the first. */
  runAll(log: (line: string) => void = () => undefined): Promise<void> {
    this.running ??= (async () => {
      while (this.steps.length > 0) {
        const step = this.steps.pop() as Step;
        try {
          await step.run();
        } catch (err) {
          log(`cleanup of ${step.what} failed: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
    })();
    return this.running;
  }
}

/** Registers an already-started resource, or stops it at once if the run is being torn down. */
export async function own(teardown: Teardown, what: string, stop: () => Promise<void>): Promise<() => void> {
  try {
    return teardown.add(what, stop);
  } catch (err) {
    await stop();
    throw err;
  }
}
