import { link, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
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

/** Roots this process holds the lock of. */
const held = new Set<string>();

/**
 * Whether `pid` is a live process other than this one's earlier life. A lock naming this process's own pid that this
 * process does not hold was left by an earlier process with the same pid: in a container the server is pid 1 after
 * every restart, and its lock from before a kill -9 must not refuse it forever.
 */
function aliveHolder(root: string, pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (pid === process.pid) return held.has(root);
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function inUse(root: string, pid: number): Error {
  return new Error(`the store ${root} is in use by registry-cache (pid ${pid})`);
}

async function readPid(path: string): Promise<number> {
  return Number((await readFile(path, 'utf8')).trim());
}

/** The pid holding the store, when a live process does. */
export async function storeHolder(root: string): Promise<number | undefined> {
  try {
    const pid = await readPid(join(root, LOCK_FILE));
    return aliveHolder(root, pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Takes the store's lock, or throws naming the live holder. A lock left by a process that died (kill -9, power cut)
 * is taken over: recovery is exactly what that store needs. The lock file appears with its pid already in it (a
 * hard link to a file written first), so nobody ever reads an empty one as abandoned; a stale one is moved aside
 * under this process's own name and discarded only if what was moved still names no live process (another process
 * may have taken it over meanwhile: then it is put back).
 */
export async function lockStore(root: string): Promise<StoreLock> {
  const path = join(root, LOCK_FILE);
  const mine = `${path}.${process.pid}.new`;
  const aside = `${path}.${process.pid}.stale`;
  await writeFile(mine, `${process.pid}\n`, { mode: 0o600 });
  try {
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await link(mine, path);
        held.add(root);
        let released = false;
        return {
          release: async () => {
            if (released) return;
            released = true;
            held.delete(root);
            await rm(path, { force: true });
          },
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const holder = await storeHolder(root);
      if (holder !== undefined) throw inUse(root, holder);
      try {
        await rename(path, aside);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw err;
      }
      const moved = await readPid(aside).catch(() => Number.NaN);
      if (aliveHolder(root, moved)) {
        await link(aside, path).catch(() => undefined);
        await rm(aside, { force: true });
        throw inUse(root, moved);
      }
      await rm(aside, { force: true });
    }
    throw new Error(`cannot lock the store ${root}`);
  } finally {
    await rm(mine, { force: true });
  }
}
