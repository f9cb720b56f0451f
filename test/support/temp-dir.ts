import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Creates a fresh directory under the OS temp dir whose name starts with `prefix`. */
export async function makeTempDir(prefix: string): Promise<string> {
  // Short names matter: containerd's unix socket path must fit in 108 bytes.
  return mkdtemp(join(tmpdir(), prefix.endsWith('-') ? prefix : `${prefix}-`));
}

/** Deletes `dir` recursively, ignoring a directory that is already gone. */
export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true, maxRetries: 3 });
}
