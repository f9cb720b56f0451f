import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmod, open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Credential } from '../upstream/credentials.js';

/** File under the store root holding the node-local HMAC key (mode 0600). */
export const NODE_SECRET_FILE = 'node-secret';
const SECRET_BYTES = 32;

/**
 * Keyed hashes of client credentials. Only these hashes reach the database and logs; a stolen database
 * without the node secret does not let anyone test password guesses offline.
 */
export class CredentialHasher {
  private constructor(private readonly key: Buffer) {}

  /** Loads the node secret from the store, creating it (0600) on first start. */
  static async load(storageRoot: string): Promise<CredentialHasher> {
    const file = join(storageRoot, NODE_SECRET_FILE);
    try {
      const handle = await open(file, 'wx', 0o600);
      try {
        await handle.write(randomBytes(SECRET_BYTES).toString('base64'));
        await handle.sync();
      } finally {
        await handle.close();
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    await chmod(file, 0o600);
    const key = Buffer.from((await readFile(file, 'utf8')).trim(), 'base64');
    if (key.length < SECRET_BYTES) throw new Error(`${file} is not a valid node secret; delete it to generate a new one (all pull records then need re-verification)`);
    return new CredentialHasher(key);
  }

  /** For tests: a hasher with a given key. */
  static fromKey(key: Buffer): CredentialHasher {
    return new CredentialHasher(key);
  }

  /** HMAC-SHA-256 of the credential, hex. */
  hash(credential: Credential): string {
    return createHmac('sha256', this.key).update(credential.username).update('\0').update(credential.password).digest('hex');
  }

  /** Constant-time comparison of two hashes. */
  static equal(a: string, b: string): boolean {
    const x = Buffer.from(a, 'hex');
    const y = Buffer.from(b, 'hex');
    return x.length === y.length && x.length > 0 && timingSafeEqual(x, y);
  }
}
