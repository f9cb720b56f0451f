import { afterEach } from 'vitest';
import { openMetadata, type MetadataDatabase } from '../../../src/db/open.js';

/** A manifest media type for rows the contract tests write. */
export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

/** A well-formed sha256 digest numbered `n`. */
export const digest = (n: number): string => `sha256:${n.toString(16).padStart(64, '0')}`;

/** Opens a fresh in-memory metadata database per call; each is closed after its test. */
export function memoryDatabases(): () => MetadataDatabase {
  const opened: MetadataDatabase[] = [];
  afterEach(() => {
    for (const db of opened.splice(0)) db.index.close();
  });
  return () => {
    const db = openMetadata(':memory:');
    opened.push(db);
    return db;
  };
}
