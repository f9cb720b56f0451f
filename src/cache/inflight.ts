/** Collapses concurrent calls with the same key into one: later callers share the first call's promise. */
export class Singleflight<T> {
  private readonly calls = new Map<string, Promise<T>>();

  /** Runs `fn` unless a call for `key` is already under way, in which case its result is shared. */
  run(key: string, fn: () => Promise<T>): Promise<T> {
    const existing = this.calls.get(key);
    if (existing) return existing;
    const p = fn().finally(() => this.calls.delete(key));
    this.calls.set(key, p);
    return p;
  }

  /** Number of calls under way. */
  get size(): number {
    return this.calls.size;
  }
}
