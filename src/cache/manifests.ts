import { unlinkSync } from 'node:fs';
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { RegistryConfig } from '../config/load.js';
import type { ManifestRow, Metadata } from '../db/content-index.js';
import { digestOf, parseDigest } from '../oci/digest.js';
import { OciError } from '../oci/errors.js';
import { MAX_MANIFEST_BYTES, assertManifest, manifestRefs, parseManifestJson } from '../oci/manifest.js';
import { firstHeader } from '../oci/content-headers.js';
import { MANIFEST_MEDIA_TYPES, accepts, manifestMediaType, parseAccept } from '../oci/media-types.js';
import { StoredFileUnusable, type BlobStore } from '../store/blob-store.js';
import type { UpstreamClient } from '../upstream/client.js';
import { expectStatus, readCapped, type UpstreamResponse } from '../upstream/response.js';
import { credentialKey, type Credential } from '../upstream/credentials.js';
import { Singleflight } from './inflight.js';
import { imageKeys, underPullLimit, type PullIntents, type UpstreamPulls } from './upstream-pulls.js';
import { digestKey, referenceKey, tagKey } from '../limiter/keys.js';

/** Where a manifest answer comes from. */
export type ManifestSource = 'store' | 'upstream' | 'revalidated' | 'stale';

/** A manifest ready to be served. */
export interface ManifestAnswer {
  digest: string;
  mediaType: string;
  size: number;
  source: ManifestSource;
  /** The exact stored bytes; absent for HEAD. */
  bytes?: Buffer;
  /**
   * For a stored answer given in place of an upstream failure (a stale tag, a preloaded tag the upstream does not
   * know): that failure, or the back-off answer. A client that may not have the stored digest gets this error, as it
   * would for a tag the cache does not know.
   */
  upstreamError?: OciError;
}

/** A blob request a manifest is fetched for: the fetch is accounted as that blob's (its back-off, its error codes). */
export interface OnBehalfOfBlob {
  digest: string;
}

/** A manifest request, upstream already chosen: `reference` is a digest here, a tag for the tag cache (tags.ts). */
export interface ManifestRequest {
  registry: RegistryConfig;
  repository: string;
  reference: string;
  /** The client's Accept list (parsed). */
  accept: readonly string[];
  method: 'GET' | 'HEAD';
  credential?: Credential;
}

const UPSTREAM_ACCEPT = MANIFEST_MEDIA_TYPES.join(', ');

/**
 * Bytes of stored manifests kept in memory, most recently served first: a warm hit by digest then costs a SELECT, not
 * an open, fstat, read and close of the file (36 % of a warm hit's CPU in the profile of bench/FINDINGS.md).
 */
const MANIFEST_MEMORY_BYTES = 16 * 1024 * 1024;

/**
 * Pull-through manifests by digest: from the store forever once stored (a digest never changes), fetched, hashed and
 * stored on a miss. Tags, which do change, are resolved to digests by the tag cache (tags.ts) on top of this one.
 */
export class ManifestCache {
  private readonly byDigest = new Singleflight<ManifestAnswer>();
  /** Upstream work in flight (it writes files and rows), so shutdown can abort and wait for it. */
  private readonly tasks = new Set<Promise<unknown>>();
  private readonly shutdownController = new AbortController();
  /**
   * Manifest bytes by digest. Read only for an answer the database just said is stored, so eviction still decides
   * what is served; the bytes of a digest never change, so an entry is never stale, only evicted content's is dropped.
   */
  private readonly memory = new LRUCache<string, Buffer>({ maxSize: MANIFEST_MEMORY_BYTES, sizeCalculation: (bytes) => Math.max(bytes.length, 1) });

  constructor(
    private readonly deps: {
      store: BlobStore;
      metadata: Metadata;
      upstream: UpstreamClient;
      log: Logger;
      intents?: PullIntents;
      pulls?: UpstreamPulls;
    },
  ) {}

  /** The row of the manifest stored under this digest, if it is stored. */
  storedRow(digest: string): ManifestRow | undefined {
    return this.deps.metadata.storedManifest(digest);
  }

  /**
   * Serves a manifest whose row was just read (`storedRow`): notes the access, then its bytes from memory or file.
   * Not `track`ed (the access time is batched): it writes nothing unless its file proves unusable, and that drop
   * checks for shutdown first.
   */
  serveStored(row: ManifestRow, method: 'GET' | 'HEAD'): Promise<ManifestAnswer> {
    this.shutdownController.signal.throwIfAborted();
    this.deps.metadata.touch(row.digest);
    return this.withBytes({ ...row, source: 'store' }, method);
  }

  /** Notes that a client was served `digest` through this repository, so its blobs are found from here. */
  noteServed(registry: string, repository: string, digest: string): void {
    this.deps.metadata.linkRepository(registry, repository, digest);
  }

  /**
   * GETs a manifest by digest upstream with the request's credential even when it is stored: a body that hashes to
   * the digest proves that this registry holds it in this repository and that the credential may read it (a HEAD's
   * 200 proves neither). `forBlob` runs it as part of a blob request.
   */
  fetchByDigest(req: ManifestRequest, forBlob?: OnBehalfOfBlob): Promise<ManifestAnswer> {
    const key = `${credentialKey(req.credential)}|${forBlob?.digest ?? ''}|${req.reference}`;
    return this.track(() => this.byDigest.run(key, () => this.fetch(req, req.reference, UPSTREAM_ACCEPT, req.reference, forBlob)).then((answer) => this.withBytes(answer, req.method)));
  }

  /**
   * GETs the manifest a tag names upstream, hashes and stores it (cached by digest; the tag row is the tag cache's).
   * `accept` is the client's own list when it cannot take what the tag resolves to; by default every type the cache
   * serves. For the tag cache, inside its `track`ed work.
   */
  fetchByTag(req: ManifestRequest, accept?: readonly string[]): Promise<ManifestAnswer> {
    return this.fetch(req, req.reference, accept ? accept.join(', ') : UPSTREAM_ACCEPT, undefined);
  }

  /** HEADs `req.reference` upstream (every type the cache serves accepted); the caller drains the answer. */
  headUpstream(req: ManifestRequest): Promise<UpstreamResponse> {
    return this.send(req, 'HEAD', req.reference, UPSTREAM_ACCEPT);
  }

  /**
   * Runs upstream-facing work so that shutdown aborts and waits for it: it writes files and rows, which must end before
   * the database closes. Refused once shutdown began.
   */
  async track<T>(work: () => Promise<T>): Promise<T> {
    this.shutdownController.signal.throwIfAborted();
    const running = work();
    this.tasks.add(running);
    try {
      return await running;
    } finally {
      this.tasks.delete(running);
    }
  }

  /** Drops the in-memory bytes of content whose rows eviction deleted (they would only take memory). */
  forget(digests: readonly string[]): void {
    for (const digest of digests) this.memory.delete(digest);
  }

  /** Whether this digest's bytes are held in memory. */
  holdsInMemory(digest: string): boolean {
    return this.memory.has(digest);
  }

  /** Aborts upstream requests in flight and waits until nothing more will be written. */
  async shutdown(): Promise<void> {
    this.shutdownController.abort(new Error('registry-cache is shutting down'));
    while (this.tasks.size > 0) await Promise.allSettled([...this.tasks]);
  }

  /** GETs a manifest upstream, verifies it against `expectedDigest` (or the upstream's claim), stores it. */
  private async fetch(
    req: ManifestRequest,
    reference: string,
    accept: string,
    expectedDigest: string | undefined,
    forBlob?: OnBehalfOfBlob,
  ): Promise<ManifestAnswer> {
    const { host } = req.registry;
    const byDigest = reference.includes(':');
    // A fetch with a client's own Accept is a different question from the tag's: it backs off on its own.
    const variant = accept === UPSTREAM_ACCEPT ? '' : `#${accept}`;
    const backoffKey = `${referenceKey(host, req.repository, forBlob?.digest ?? reference)}${variant}`;
    const keys = byDigest ? imageKeys(this.deps.metadata, host, req.repository, reference) : [tagKey(host, req.repository, reference)];
    return underPullLimit(this.deps.pulls, backoffKey, credentialKey(req.credential), keys, this.shutdownController.signal, async (lease) => {
      const intent = this.deps.intents?.begin(host, req.repository, reference);
      try {
        const answer = await this.fetchVerified(req, reference, accept, expectedDigest, forBlob ? 'blob' : 'manifest');
        // The tag's pull and the digest's are the same image pull; its child manifests and blobs find it by the digest,
        // and it keeps its slot until what it names is stored.
        lease?.alias(digestKey(host, req.repository, answer.digest));
        lease?.noteManifest(answer.digest);
        return answer;
      } finally {
        if (intent !== undefined) this.deps.intents?.end(intent);
      }
    });
  }

  private async fetchVerified(
    req: ManifestRequest,
    reference: string,
    accept: string,
    expectedDigest: string | undefined,
    subject: 'manifest' | 'blob',
  ): Promise<ManifestAnswer> {
    const res = await expectStatus(await this.send(req, 'GET', reference, accept), [200], subject, req.registry.host);
    const bytes = await readManifestBody(res, req.registry.host);
    const algorithm = expectedDigest ? parseDigest(expectedDigest).algorithm : 'sha256';
    const digest = digestOf(bytes, algorithm);
    const claimed = firstHeader(res.headers['docker-content-digest']);
    if (expectedDigest && digest !== expectedDigest) {
      throw new OciError('DIGEST_INVALID', 'upstream manifest does not match the requested digest', { status: 502, detail: { digest: expectedDigest } });
    }
    if (!expectedDigest && claimed && claimed.startsWith('sha256:') && claimed !== digest) {
      throw new OciError('DIGEST_INVALID', 'upstream manifest does not match its Docker-Content-Digest', { status: 502 });
    }
    const parsed = parseManifestJson(bytes);
    const contentType = firstHeader(res.headers['content-type'])?.split(';')[0]?.trim();
    const mediaType = contentType && MANIFEST_MEDIA_TYPES.includes(contentType) ? contentType : manifestMediaType(parsed, contentType);
    assertManifest(parsed, mediaType, parseAccept(accept));
    const existing = this.deps.metadata.getManifest(digest);
    if (!existing) {
      await this.deps.store.writeSmall(digest, bytes);
      this.deps.metadata.insertManifest({ digest, size: bytes.length, mediaType }, manifestRefs(parsed, mediaType), {
        registry: req.registry.host,
        repository: req.repository,
      });
      this.deps.log.info({ registry: req.registry.host, repository: req.repository, digest, mediaType }, 'manifest stored');
    }
    return { digest, size: bytes.length, mediaType: existing?.mediaType ?? mediaType, source: 'upstream', bytes };
  }

  private send(req: ManifestRequest, method: 'GET' | 'HEAD', reference: string, accept: string): Promise<UpstreamResponse> {
    return this.deps.upstream.send({
      registry: req.registry,
      method,
      path: `/v2/${req.repository}/manifests/${reference}`,
      headers: { accept },
      repository: req.repository,
      signal: this.shutdownController.signal,
      ...(req.credential ? { credential: req.credential } : {}),
    });
  }

  /**
   * The answer as a GET or HEAD wants it: with the stored bytes (read if the answer lacks them), or without. A stored
   * file found missing or corrupt is dropped with its row, as `verify --repair` would drop it, and StoredFileUnusable
   * thrown: the caller asks again, which fetches it upstream. (A HEAD reads no file, so it still answers from the row.)
   */
  async withBytes(answer: ManifestAnswer, method: 'GET' | 'HEAD'): Promise<ManifestAnswer> {
    if (method === 'HEAD') {
      const { bytes: _omit, ...rest } = answer;
      return rest;
    }
    if (answer.bytes) {
      this.memory.set(answer.digest, answer.bytes);
      return answer;
    }
    // Every answer without bytes comes from a row read just now: the database has said the manifest is stored.
    let bytes = this.memory.get(answer.digest);
    if (!bytes) {
      try {
        bytes = await this.deps.store.readWhole(answer.digest, answer.size);
      } catch (err) {
        if (err instanceof StoredFileUnusable) this.dropUnusable(answer.digest, answer.size, err);
        throw err;
      }
      this.memory.set(answer.digest, bytes);
    }
    return { ...answer, bytes };
  }

  /**
   * Removes a stored manifest whose file `readWhole` refused, as `verify --repair` does: the file, then its row (its
   * references, pull records and preloaded marks go with it by cascade; tags and repository links stay, the names
   * it is fetched again by), in one synchronous stretch, so a fetch that stores it again cannot interleave and lose
   * its new file. A read on the thread pool spans turns of the event loop: if the file is sound by now (another
   * request dropped and fetched it meanwhile), nothing is removed and the caller's retry serves it.
   */
  private dropUnusable(digest: string, size: number, err: StoredFileUnusable): void {
    // After shutdown began the database may be closed: the file stays refused and is dropped at the next read.
    if (this.shutdownController.signal.aborted || this.deps.store.isWholeSync(digest, size)) return;
    try {
      unlinkSync(this.deps.store.pathFor(digest));
    } catch (unlinkErr) {
      if ((unlinkErr as NodeJS.ErrnoException).code !== 'ENOENT') throw unlinkErr;
    }
    this.deps.metadata.deleteBlob(digest);
    this.memory.delete(digest);
    this.deps.log.warn({ digest, reason: err.message }, 'stored manifest unusable: dropped with its row, fetching it again');
  }
}

async function readManifestBody(res: UpstreamResponse, registry: string): Promise<Buffer> {
  const tooLarge = (): OciError => new OciError('MANIFEST_INVALID', 'upstream manifest exceeds 4 MiB', { status: 502 });
  const declared = Number(res.headers['content-length']);
  if (Number.isFinite(declared) && declared > MAX_MANIFEST_BYTES) {
    res.body.destroy();
    throw tooLarge();
  }
  const bytes = await readCapped(res.body, MAX_MANIFEST_BYTES, registry, tooLarge);
  if (Number.isFinite(declared) && declared !== bytes.length) {
    throw new OciError('SIZE_INVALID', 'upstream manifest is shorter than its Content-Length', { status: 502 });
  }
  return bytes;
}
