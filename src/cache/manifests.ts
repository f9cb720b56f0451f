import type { Logger } from 'pino';
import type { RegistryConfig } from '../config/load.js';
import type { Metadata } from '../db/content-index.js';
import { digestOf, parseDigest } from '../oci/digest.js';
import { OciError, isOciError } from '../oci/errors.js';
import { MAX_MANIFEST_BYTES, assertManifest, manifestRefs, parseManifestJson } from '../oci/manifest.js';
import { readCapped } from '../upstream/response.js';
import { firstHeader } from '../oci/content-headers.js';
import { MANIFEST_MEDIA_TYPES, accepts, manifestMediaType, parseAccept } from '../oci/media-types.js';
import type { BlobStore } from '../store/blob-store.js';
import { drain, type UpstreamClient, type UpstreamResponse } from '../upstream/client.js';
import { credentialKey, type Credential } from '../upstream/credentials.js';
import { errorForUpstreamStatus } from '../upstream/errors.js';
import { Singleflight } from './inflight.js';
import { imageKeys, underPullLimit, type PullIntents, type UpstreamPulls } from './upstream-pulls.js';
import { countsForBackoff } from '../limiter/backoff.js';
import { digestKey, referenceKey, tagKey } from '../limiter/keys.js';

/** Manifests are small documents; anything bigger is refused rather than buffered. */

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

/** A manifest request, upstream already chosen. */
export interface ManifestRequest {
  registry: RegistryConfig;
  repository: string;
  reference: string;
  isDigest: boolean;
  /** The client's Accept list (parsed). */
  accept: readonly string[];
  method: 'GET' | 'HEAD';
  credential?: Credential;
}

const UPSTREAM_ACCEPT = MANIFEST_MEDIA_TYPES.join(', ');

/** Pull-through manifests: by digest forever from the store; by tag revalidated upstream after `tagTtl`. */
export class ManifestCache {
  private readonly byDigest = new Singleflight<ManifestAnswer>();
  private readonly byTag = new Singleflight<ManifestAnswer>();
  /** Upstream work in flight (it writes files and rows), so shutdown can abort and wait for it. */
  private readonly tasks = new Set<Promise<unknown>>();
  private readonly shutdownController = new AbortController();

  constructor(
    private readonly deps: {
      store: BlobStore;
      metadata: Metadata;
      upstream: UpstreamClient;
      log: Logger;
      tagTtlMs: number;
      intents?: PullIntents;
      pulls?: UpstreamPulls;
      /** Whether `preload --name` gave this repository's tag this digest: such a tag outlives an upstream 404. */
      preloadedAs?: (registry: string, repository: string, digest: string) => boolean;
    },
  ) {}

  /** Whether a manifest is stored under this digest. */
  isStored(digest: string): boolean {
    return this.deps.metadata.getManifest(digest) !== undefined;
  }

  /** The digest a tag last resolved to, if its manifest is still stored. */
  lastKnownDigest(registry: string, repository: string, tag: string): string | undefined {
    const row = this.deps.metadata.getTag(registry, repository, tag);
    return row && this.deps.metadata.getManifest(row.digest) ? row.digest : undefined;
  }

  /** Notes that a client was served `digest` through this repository, so its blobs are found from here. */
  noteServed(registry: string, repository: string, digest: string): void {
    this.deps.metadata.linkRepository(registry, repository, digest);
  }

  /** Resolves a manifest request to stored bytes, fetching or revalidating upstream as needed. */
  async get(req: ManifestRequest): Promise<ManifestAnswer> {
    this.shutdownController.signal.throwIfAborted();
    const work = (req.isDigest ? this.getByDigest(req) : this.getByTag(req)).then((answer) => this.withBytes(answer, req.method));
    this.tasks.add(work);
    try {
      return await work;
    } finally {
      this.tasks.delete(work);
    }
  }

  /**
   * GETs a manifest by digest upstream with the request's credential even when it is stored: a body that hashes to
   * the digest proves that this registry holds it in this repository and that the credential may read it (a HEAD's
   * 200 proves neither). `forBlob` runs it as part of a blob request.
   */
  async fetchByDigest(req: ManifestRequest, forBlob?: OnBehalfOfBlob): Promise<ManifestAnswer> {
    this.shutdownController.signal.throwIfAborted();
    const key = `${credentialKey(req.credential)}|${forBlob?.digest ?? ''}|${req.reference}`;
    const work = this.byDigest
      .run(key, () => this.fetch(req, req.reference, UPSTREAM_ACCEPT, req.reference, forBlob))
      .then((answer) => this.withBytes(answer, req.method));
    this.tasks.add(work);
    try {
      return await work;
    } finally {
      this.tasks.delete(work);
    }
  }

  /** Aborts upstream requests in flight and waits until nothing more will be written. */
  async shutdown(): Promise<void> {
    this.shutdownController.abort(new Error('registry-cache is shutting down'));
    while (this.tasks.size > 0) await Promise.allSettled([...this.tasks]);
  }

  private async getByDigest(req: ManifestRequest): Promise<ManifestAnswer> {
    const row = this.deps.metadata.getManifest(req.reference);
    if (row) {
      this.deps.metadata.touch(row.digest);
      return { ...row, source: 'store' };
    }
    // A manifest by digest never changes: one upstream GET, ever, per digest.
    // Keyed by credential too: one client's successful fetch must not answer for another's credentials.
    return this.byDigest.run(`${credentialKey(req.credential)}||${req.reference}`, () => this.fetch(req, req.reference, UPSTREAM_ACCEPT, req.reference));
  }

  private async getByTag(req: ManifestRequest): Promise<ManifestAnswer> {
    const { metadata } = this.deps;
    const tagRow = metadata.getTag(req.registry.host, req.repository, req.reference);
    const known = tagRow && metadata.getManifest(tagRow.digest);
    const fresh = tagRow !== undefined && Date.now() - tagRow.fetchedAt < this.deps.tagTtlMs;
    let answer: ManifestAnswer;
    if (known && fresh) {
      metadata.touch(known.digest);
      answer = { ...known, source: 'store' };
    } else {
      const key = `${credentialKey(req.credential)}|${req.registry.host}/${req.repository}:${req.reference}`;
      answer = await this.byTag.run(key, () => this.resolveTag(req));
    }
    if (accepts(req.accept, answer.mediaType)) return answer;
    // The client cannot take the type this tag resolves to (e.g. an index for a client that wants one image):
    // ask upstream with the client's own Accept; cache by digest, leave the tag's answer alone.
    return this.fetch(req, req.reference, req.accept.join(', '), undefined);
  }

  /** HEADs the tag upstream; refetches only when the digest changed. Serves the last known digest if the upstream is down. */
  private async resolveTag(req: ManifestRequest): Promise<ManifestAnswer> {
    const { metadata, log } = this.deps;
    const tagRow = metadata.getTag(req.registry.host, req.repository, req.reference);
    const known = tagRow && metadata.getManifest(tagRow.digest);
    if (!known) return this.fetchTag(req);
    const backoffKey = tagKey(req.registry.host, req.repository, req.reference);
    const credentialClass = credentialKey(req.credential);
    try {
      // While the tag backs off, the stored answer is served as usual, without asking the upstream again.
      const blocked = this.deps.pulls?.backoff.check(backoffKey, credentialClass);
      if (blocked) {
        metadata.touch(known.digest);
        return { ...known, source: 'stale', upstreamError: blocked };
      }
      const res = await this.send(req, 'HEAD', req.reference, UPSTREAM_ACCEPT).catch((err: unknown) => {
        if (countsForBackoff(err)) this.deps.pulls?.backoff.failure(backoffKey, err, credentialClass);
        throw err;
      });
      await drain(res.body);
      if (res.status !== 200) {
        const err = errorForUpstreamStatus(res.status, 'manifest', req.registry.host, firstHeader(res.headers['retry-after']));
        if (countsForBackoff(err)) this.deps.pulls?.backoff.failure(backoffKey, err, credentialClass);
        // An air-gapped preload names a tag the upstream never had: the upstream's 404 does not undo the import.
        if (res.status === 404 && this.deps.preloadedAs?.(req.registry.host, req.repository, known.digest)) return { ...known, source: 'store', upstreamError: err };
        throw err;
      }
      this.deps.pulls?.backoff.success(backoffKey, credentialClass);
      // The tag still names the digest this repository's tag was fetched as: that GET proved possession. A HEAD naming
      // any other digest proves nothing (a catch-all upstream could name another registry's stored manifest), so
      // that manifest is fetched and hashed like a new one.
      if (firstHeader(res.headers['docker-content-digest']) === known.digest) {
        metadata.putTag(req.registry.host, req.repository, req.reference, known.digest);
        // A revalidated tag is a pull of the image: eviction must see it as in use.
        metadata.touch(known.digest);
        return { ...known, source: 'revalidated' };
      }
      return await this.fetchTag(req);
    } catch (err) {
      if (isUpstreamOutage(err)) {
        log.warn(
          { registry: req.registry.host, repository: req.repository, tag: req.reference, digest: known.digest, err: errSummary(err) },
          'upstream unavailable; serving last known digest for tag',
        );
        metadata.touch(known.digest);
        return { ...known, source: 'stale', upstreamError: err };
      }
      throw err;
    }
  }

  private async fetchTag(req: ManifestRequest): Promise<ManifestAnswer> {
    const answer = await this.fetch(req, req.reference, UPSTREAM_ACCEPT, undefined);
    this.deps.metadata.putTag(req.registry.host, req.repository, req.reference, answer.digest);
    return answer;
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
    const res = await this.send(req, 'GET', reference, accept);
    if (res.status !== 200) {
      await drain(res.body);
      throw errorForUpstreamStatus(res.status, subject, req.registry.host, firstHeader(res.headers['retry-after']));
    }
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

  private async withBytes(answer: ManifestAnswer, method: 'GET' | 'HEAD'): Promise<ManifestAnswer> {
    if (method === 'HEAD') {
      const { bytes: _omit, ...rest } = answer;
      return rest;
    }
    if (answer.bytes) return answer;
    return { ...answer, bytes: await this.deps.store.readSmall(answer.digest) };
  }
}

/** Upstream trouble during which a known tag answer may be served: unreachable, 5xx, timeouts, rate limits. */
function isUpstreamOutage(err: unknown): err is OciError {
  return isOciError(err) && (err.status >= 500 || err.code === 'TOOMANYREQUESTS');
}

function errSummary(err: unknown): { code?: string; message?: string } {
  return isOciError(err) ? { code: err.code, message: err.message } : { message: String(err) };
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
