import { hash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';

// Also the entry point of `verify`'s hashing threads, loaded by its path: it imports nothing of the project (under
// the test runner the thread runs this very .ts file through Node's type stripping, where `.js` imports would not
// resolve), and uses only erasable TypeScript.

/** Files up to this size are read whole with one read; larger ones are streamed. */
export const SINGLE_READ_MAX = 256 * 1024;

/** A small stored file to hash: path, digest algorithm and the size its row records (at most SINGLE_READ_MAX). */
export interface SmallFile {
  path: string;
  algorithm: 'sha256' | 'sha512';
  size: number;
}

/** What hashing one small file found: its size and `algorithm:hex` digest, that it is missing, or why it failed. */
export type SmallFileResult = { size: number; digest: string } | { missing: true } | { error: string };

/** `workerData` that makes this module, loaded as a thread, serve hashing requests. */
export const HASH_THREAD = 'registry-cache:small-file-hasher';

let scratch: Buffer | undefined;

/**
 * Hashes small files with one synchronous read each into one reused buffer: for files of a few KiB a thread-pool
 * round trip per async read costs 3–5× the read itself, and one buffer per file made work for the collector. A file
 * larger than recorded is read whole, so the report gives its real size.
 */
export function hashSmallFiles(files: readonly SmallFile[]): SmallFileResult[] {
  const buffer = (scratch ??= Buffer.allocUnsafe(SINGLE_READ_MAX + 1));
  const results: SmallFileResult[] = [];
  for (const file of files) {
    let fd: number;
    try {
      fd = openSync(file.path, 'r');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      results.push(code === 'ENOENT' ? { missing: true } : { error: (err as Error).message });
      continue;
    }
    try {
      let bytes = buffer.subarray(0, readSync(fd, buffer, 0, file.size + 1, 0));
      if (bytes.length > file.size) {
        const whole = Buffer.allocUnsafe(fstatSync(fd).size);
        bytes = whole.subarray(0, readSync(fd, whole, 0, whole.length, 0));
      }
      results.push({ size: bytes.length, digest: `${file.algorithm}:${hash(file.algorithm, bytes, 'hex')}` });
    } catch (err) {
      results.push({ error: (err as Error).message });
    } finally {
      closeSync(fd);
    }
  }
  return results;
}

if (!isMainThread && workerData === HASH_THREAD && parentPort) {
  const port = parentPort;
  port.on('message', (files: SmallFile[]) => port.postMessage(hashSmallFiles(files)));
}
