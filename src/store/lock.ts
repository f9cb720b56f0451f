import { open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { syncDirectory } from './blob-store.js';

/** The file a running server holds in its store root. */
export const LOCK_FILE = 'registry-cache.lock';

/** Written by the lock holder after it closed the database cleanly; removed by the next holder as it starts. */
export const CLEAN_SHUTDOWN_FILE = 'clean-shutdown';

/** Marks the store as closed cleanly (disk and database agree), durably. Only the lock holder may. */
export async function markCleanShutdown(root: string): Promise<void> {
  const handle = await open(join(root, CLEAN_SHUTDOWN_FILE), 'w', 0o600);
  try {
    await handle.write(`${new Date().toISOString()}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await syncDirectory(root);
}

/**
 * Removes the clean-shutdown mark and says whether it was there. The removal is made durable before the caller
 * writes anything, so a crash (or power cut) later in this run can never be mistaken for a clean stop.
 */
export async function takeCleanShutdownMark(root: string): Promise<boolean> {
  try {
    await rm(join(root, CLEAN_SHUTDOWN_FILE));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  await syncDirectory(root);
  return true;
}

/** Held by whoever may run crash recovery and eviction on a store: the server, or a maintenance command. */
export interface StoreLock {
  release(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The pid holding the store, when a live process does. */
export async function storeHolder(root: string): Promise<number | undefined> {
  try {
    const pid = Number((await readFile(join(root, LOCK_FILE), 'utf8')).trim());
    return Number.isInteger(pid) && pid > 0 && alive(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Takes the store's lock, or throws naming the live holder. A lock left by a process that died (kill -9, power cut)
 * is taken over: recovery is exactly what that store needs.
 */
export async function lockStore(root: string): Promise<StoreLock> {
  const path = join(root, LOCK_FILE);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const handle = await open(path, 'wx', 0o600);
      await handle.write(`${process.pid}\n`);
      await handle.close();
      let released = false;
      return {
        release: async () => {
          if (released) return;
          released = true;
          await rm(path, { force: true });
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = await storeHolder(root);
      if (holder !== undefined) throw new Error(`the store ${root} is in use by registry-cache (pid ${holder})`);
      await rm(path, { force: true });
    }
  }
  throw new Error(`cannot lock the store ${root}`);
}
