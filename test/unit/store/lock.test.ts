import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { LOCK_FILE, lockStore, storeHolder } from '../../../src/store/lock.js';
import { makeTempDir, removeTempDir } from '../../support/temp-dir.js';

/** A pid no process has: above the kernel's pid_max. */
const DEAD_PID = 4_194_305;

describe('the store lock (store/lock.ts)', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });
  const root = async (): Promise<string> => {
    const dir = await makeTempDir('rc-lock-');
    cleanup.push(() => removeTempDir(dir));
    return dir;
  };

  it('takes over a lock naming its own pid that it does not hold: a container restarted after kill -9 is pid 1 again', async () => {
    const dir = await root();
    await writeFile(join(dir, LOCK_FILE), `${process.pid}\n`);
    expect(await storeHolder(dir)).toBeUndefined();
    const lock = await lockStore(dir);
    expect(await storeHolder(dir)).toBe(process.pid);
    // Held now: a second taker in this process is refused.
    await expect(lockStore(dir)).rejects.toThrow(`in use by registry-cache (pid ${process.pid})`);
    await lock.release();
    expect(await readdir(dir)).toEqual([]);
  });

  it('refuses while a live process holds it, takes over from a dead one, and leaves no file of its own behind', async () => {
    const dir = await root();
    const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
    cleanup.push(async () => void sleeper.kill());
    await writeFile(join(dir, LOCK_FILE), `${sleeper.pid}\n`);
    await expect(lockStore(dir)).rejects.toThrow(`in use by registry-cache (pid ${sleeper.pid})`);
    expect(await readFile(join(dir, LOCK_FILE), 'utf8')).toBe(`${sleeper.pid}\n`);
    for (const stale of [`${DEAD_PID}\n`, '', 'garbage']) {
      await writeFile(join(dir, LOCK_FILE), stale);
      const lock = await lockStore(dir);
      expect(await readFile(join(dir, LOCK_FILE), 'utf8')).toBe(`${process.pid}\n`);
      expect(await readdir(dir)).toEqual([LOCK_FILE]);
      await lock.release();
    }
  });

  it('lets exactly one of two processes take over a dead holder’s lock at once (a server restarting after kill -9, a command)', async () => {
    const dir = await root();
    const lockModule = pathToFileURL(resolve('dist/store/lock.js')).href;
    // Each child loads the module and says so, then on the first line it reads takes the lock (or fails) and says
    // which, and on the second releases what it took: all of them start taking at once.
    const child = `
      const { lockStore } = await import(${JSON.stringify(lockModule)});
      const lines = process.stdin.setEncoding('utf8')[Symbol.asyncIterator]();
      process.stdout.write('ready\\n');
      await lines.next();
      let lock;
      try { lock = await lockStore(${JSON.stringify(dir)}); process.stdout.write('won\\n'); }
      catch (err) { process.stdout.write('lost ' + err.message + '\\n'); }
      await lines.next();
      await lock?.release();
      process.exit(0);`;
    for (let round = 0; round < 15; round++) {
      await writeFile(join(dir, LOCK_FILE), `${DEAD_PID}\n`);
      const children = Array.from({ length: 2 }, () => spawn(process.execPath, ['--input-type=module', '-e', child], { stdio: ['pipe', 'pipe', 'inherit'] }));
      const said = children.map((c) => c.stdout.setEncoding('utf8')[Symbol.asyncIterator]());
      const next = async (i: number): Promise<string> => String((await said[i]?.next())?.value ?? '').trim();
      expect(await Promise.all(children.map((_, i) => next(i)))).toEqual(['ready', 'ready']);
      for (const c of children) c.stdin.write('take\n');
      const answers = await Promise.all(children.map((_, i) => next(i)));
      expect(answers.filter((a) => a === 'won'), answers.join('; ')).toHaveLength(1);
      for (const a of answers.filter((x) => x !== 'won')) expect(a).toMatch(/^lost the store .* is in use by registry-cache \(pid \d+\)$/);
      await Promise.all(children.map(async (c) => {
        c.stdin.write('go\n');
        await once(c, 'exit');
      }));
      expect(await readdir(dir)).toEqual([]);
    }
  });
});
