import type { PullRecord } from '../db/pull-records.js';
import { CredentialHasher } from './credential-hash.js';

/** Whether the recorded pullers include `hash` (constant-time per comparison, and over every hash recorded). */
export function recordIncludes(record: PullRecord | undefined, hash: string): boolean {
  let found = false;
  for (const h of record?.credentialHashes ?? []) if (CredentialHasher.equal(h, hash)) found = true;
  return found;
}
