import { Metadata, type MetadataOptions } from './content-index.js';
import { openDatabase, type DatabaseOptions } from './database.js';
import { PullIntentLog } from './intents.js';
import { PullRecords } from './pull-records.js';

/** The metadata database's concerns, sharing one connection that stays inside db/. */
export interface MetadataDatabase {
  /** Blobs, manifests, references, tags, repository links, usage; `index.close()` closes the connection. */
  index: Metadata;
  records: PullRecords;
  intents: PullIntentLog;
}

/** Opens (and migrates) the metadata database at `file` (`:memory:` for a private in-memory one). */
export function openMetadata(file: string, options: DatabaseOptions & MetadataOptions = {}): MetadataDatabase {
  const db = openDatabase(file, options);
  return { index: new Metadata(db, options), records: new PullRecords(db), intents: new PullIntentLog(db) };
}
