import { describe, expect, it } from 'vitest';
import { digest, memoryDatabases, OCI_MANIFEST } from './memory-database.js';

describe('pull records (db/pull-records.ts) against an in-memory database', () => {
  const open = memoryDatabases();

  it('records a pull only for stored content, per repository, with each credential hash once', () => {
    const { index, records } = open();
    records.recordSuccess('r.io', 'team/app', digest(1), { kind: 'credential', hash: 'h1' });
    expect(records.get('r.io', 'team/app', digest(1))).toBeUndefined();
    index.insertManifest({ digest: digest(1), size: 3, mediaType: OCI_MANIFEST }, [], { registry: 'r.io', repository: 'team/app' });
    records.recordSuccess('r.io', 'team/app', digest(1), { kind: 'credential', hash: 'h1' });
    records.recordSuccess('r.io', 'team/app', digest(1), { kind: 'credential', hash: 'h1' });
    records.recordSuccess('r.io', 'team/app', digest(1), { kind: 'credential', hash: 'h2' });
    const record = records.get('r.io', 'team/app', digest(1));
    expect(record).toMatchObject({ registry: 'r.io', repository: 'team/app', digest: digest(1), nodePodsAccessible: false, preloaded: false });
    expect(record?.credentialHashes.sort()).toEqual(['h1', 'h2']);
    expect(record?.lastVerified).toBeTypeOf('number');
    expect(records.get('r.io', 'team/other', digest(1))).toBeUndefined();
    expect(records.hasNodePodsAccessible('r.io', 'team/app')).toBe(false);
  });

  it('never takes node-pods access back once granted, and opens the repository to every pod', () => {
    const { index, records } = open();
    index.insertManifest({ digest: digest(1), size: 3, mediaType: OCI_MANIFEST }, [], { registry: 'r.io', repository: 'team/app' });
    records.recordSuccess('r.io', 'team/app', digest(1), { kind: 'nodePodsAccessible' });
    records.recordSuccess('r.io', 'team/app', digest(1), { kind: 'credential', hash: 'h1' });
    expect(records.get('r.io', 'team/app', digest(1))?.nodePodsAccessible).toBe(true);
    expect(records.hasNodePodsAccessible('r.io', 'team/app')).toBe(true);
    expect(records.hasNodePodsAccessible('r.io', 'team/other')).toBe(false);
  });

  it('counts preloaded content under its image name until a real pull of the digest anywhere', () => {
    const { index, records } = open();
    index.insertManifest({ digest: digest(1), size: 3, mediaType: OCI_MANIFEST }, [], { registry: 'r.io', repository: 'team/app' });
    records.markPreloaded(digest(1), 'preload', 'r.io/team/app');
    expect(records.isPreloaded('r.io', 'team/app', digest(1))).toBe(true);
    expect(records.isPreloaded('r.io', 'team/other', digest(1))).toBe(false);
    expect(records.importedAs('r.io', 'team/app', digest(1))).toBe(true);
    expect(records.get('r.io', 'team/app', digest(1))).toMatchObject({ preloaded: true, credentialHashes: [], createdAt: 0 });
    index.linkRepository('r.io', 'team/pulled', digest(1));
    records.recordSuccess('r.io', 'team/pulled', digest(1), { kind: 'credential', hash: 'h1' });
    expect(records.isPreloaded('r.io', 'team/app', digest(1))).toBe(false);
    // What preload imported stays known whatever pulls happened since.
    expect(records.importedAs('r.io', 'team/app', digest(1))).toBe(true);
  });

  it('marks what a store held when verification is first enabled as preloaded through its repositories, once', () => {
    const { index, records } = open();
    index.insertManifest({ digest: digest(1), size: 3, mediaType: OCI_MANIFEST }, [], { registry: 'r.io', repository: 'team/app' });
    index.insertManifest({ digest: digest(2), size: 3, mediaType: OCI_MANIFEST }, [], { registry: 'r.io', repository: 'team/rec' });
    records.recordSuccess('r.io', 'team/rec', digest(2), { kind: 'nodePodsAccessible' });
    expect(records.initializeVerification()).toBe(1);
    expect(records.initializeVerification()).toBeUndefined();
    expect(records.isPreloaded('r.io', 'team/app', digest(1))).toBe(true);
    expect(records.isPreloaded('r.io', 'team/elsewhere', digest(1))).toBe(false);
    expect(records.importedAs('r.io', 'team/app', digest(1))).toBe(false);
  });

  it('lists records and preloaded manifests in (registry, repository, digest) order', () => {
    const { index, records } = open();
    index.insertManifest({ digest: digest(2), size: 3, mediaType: OCI_MANIFEST }, [], { registry: 'r.io', repository: 'b' });
    index.insertManifest({ digest: digest(1), size: 3, mediaType: OCI_MANIFEST }, [], { registry: 'r.io', repository: 'a' });
    index.insertBlob(digest(3), 3, null);
    records.recordSuccess('r.io', 'b', digest(2), { kind: 'credential', hash: 'h1' });
    records.markPreloaded(digest(1), 'preload', 'r.io/a');
    // A preloaded layer is not an image: not listed.
    records.markPreloaded(digest(3), 'preload', 'r.io/a');
    expect(records.list().map((r) => [r.repository, r.digest, r.preloaded, r.credentialHashes])).toEqual([
      ['a', digest(1), true, []],
      ['b', digest(2), false, ['h1']],
    ]);
  });
});
