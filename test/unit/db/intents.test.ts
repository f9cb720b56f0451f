import { describe, expect, it } from 'vitest';
import { digest, memoryDatabases, OCI_MANIFEST } from './memory-database.js';

describe('pull intents (db/intents.ts) against an in-memory database', () => {
  const open = memoryDatabases();

  it('counts an intent from its beginning to its end', () => {
    const { intents } = open();
    const a = intents.begin('r.io', 'team/app', 'v1');
    const b = intents.begin('r.io', 'team/app', digest(1));
    expect(a).not.toBe(b);
    expect(intents.pending()).toBe(2);
    intents.end(a);
    expect(intents.pending()).toBe(1);
    intents.end(b);
    expect(intents.pending()).toBe(0);
  });

  it('turns leftover intents whose content is stored into records without credentials, and drops them all', () => {
    const { index, records, intents } = open();
    index.insertManifest({ digest: digest(1), size: 3, mediaType: OCI_MANIFEST }, [], { registry: 'r.io', repository: 'team/app' });
    index.insertManifest({ digest: digest(2), size: 3, mediaType: OCI_MANIFEST }, [], { registry: 'r.io', repository: 'team/tagged' });
    index.putTag('r.io', 'team/tagged', 'v1', digest(2));
    intents.begin('r.io', 'team/app', digest(1));
    intents.begin('r.io', 'team/tagged', 'v1');
    // Neither stored by digest nor a known tag: nothing to record.
    intents.begin('r.io', 'team/missing', digest(3));
    intents.begin('r.io', 'team/missing', 'v9');
    expect(intents.recover()).toBe(4);
    expect(intents.pending()).toBe(0);
    for (const [repository, d] of [['team/app', digest(1)], ['team/tagged', digest(2)]] as const) {
      expect(records.get('r.io', repository, d)).toMatchObject({ nodePodsAccessible: false, credentialHashes: [], lastVerified: null, preloaded: false });
    }
    expect(records.get('r.io', 'team/missing', digest(3))).toBeUndefined();
    expect(records.list()).toHaveLength(2);
  });

  it('leaves an existing record as it was when its intent is recovered', () => {
    const { index, records, intents } = open();
    index.insertManifest({ digest: digest(1), size: 3, mediaType: OCI_MANIFEST }, [], { registry: 'r.io', repository: 'team/app' });
    records.recordSuccess('r.io', 'team/app', digest(1), { kind: 'nodePodsAccessible' });
    intents.begin('r.io', 'team/app', digest(1));
    expect(intents.recover()).toBe(1);
    expect(records.get('r.io', 'team/app', digest(1))?.nodePodsAccessible).toBe(true);
  });
});
