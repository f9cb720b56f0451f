import type { Logger } from 'pino';
import type { Metadata } from '../db/content-index.js';
import { countsForBackoff } from '../limiter/backoff.js';
import { tagKey } from '../limiter/keys.js';
import { OciError, isOciError } from '../oci/errors.js';
import { API_VERSION_HEADERS, firstHeader } from '../oci/content-headers.js';
import { accepts } from '../oci/media-types.js';
import type { Access, CredentialVerifier } from '../policy/verifier.js';
import { StoredFileUnusable } from '../store/blob-store.js';
import type { UpstreamClient } from '../upstream/client.js';
import { credentialKey } from '../upstream/credentials.js';
import { drain, expectStatus, readCapped, type UpstreamResponse } from '../upstream/response.js';
import { Singleflight } from './inflight.js';
import type { ManifestAnswer, ManifestCache, ManifestRequest } from './manifests.js';
import type { CacheReply } from './reply.js';
import type { UpstreamPulls } from './upstream-pulls.js';

// Tags through the cache, both ways a client meets them: a tag resolved to a manifest (TagCache: stored, revalidated
// upstream after `tagTtl`, the last known digest served while the upstream is down) and the tag list (TagService:
// passed through, never stored).

/**
 * Pull-through tags: a tag resolves to a digest, and the manifest cache (by digest) holds what it names. A stored tag
 * is fresh for `tagTtl`; after that one upstream HEAD, shared by concurrent requests, revalidates it, and the manifest
 * is fetched again only when the digest changed. While the upstream is down the last known digest is served.
 */
export class TagCache {
  private readonly revalidations = new Singleflight<ManifestAnswer>();

  constructor(
    private readonly deps: {
      manifests: ManifestCache;
      metadata: Metadata;
      log: Logger;
      tagTtlMs: number;
      pulls?: UpstreamPulls;
      /** Whether `preload --name` gave this repository's tag this digest: such a tag outlives an upstream 404. */
      preloadedAs?: (registry: string, repository: string, digest: string) => boolean;
    },
  ) {}

  /**
   * The manifest `req.reference` (a tag) names now, revalidating or fetching upstream as needed. A stored manifest
   * whose file proves unusable loses its row, so asking again fetches the tag upstream.
   */
  get(req: ManifestRequest): Promise<ManifestAnswer> {
    const { manifests } = this.deps;
    const once = (): Promise<ManifestAnswer> => this.resolve(req).then((answer) => manifests.withBytes(answer, req.method));
    return manifests.track(() => once().catch((err: unknown) => (err instanceof StoredFileUnusable ? once() : Promise.reject(err))));
  }

  /** The digest a tag last resolved to, if its manifest is still stored. */
  lastKnownDigest(registry: string, repository: string, tag: string): string | undefined {
    const row = this.deps.metadata.getTag(registry, repository, tag);
    return row && this.deps.metadata.getManifest(row.digest) ? row.digest : undefined;
  }

  private async resolve(req: ManifestRequest): Promise<ManifestAnswer> {
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
      answer = await this.revalidations.run(key, () => this.revalidate(req));
    }
    if (accepts(req.accept, answer.mediaType)) return answer;
    // The client cannot take the type this tag resolves to (e.g. an index for a client that wants one image):
    // ask upstream with the client's own Accept; cache by digest, leave the tag's answer alone.
    return this.deps.manifests.fetchByTag(req, req.accept);
  }

  /** HEADs the tag upstream; refetches only when the digest changed. Serves the last known digest if the upstream is down. */
  private async revalidate(req: ManifestRequest): Promise<ManifestAnswer> {
    const { metadata, log } = this.deps;
    const tagRow = metadata.getTag(req.registry.host, req.repository, req.reference);
    const known = tagRow && metadata.getManifest(tagRow.digest);
    if (!known) return this.fetch(req);
    const backoffKey = tagKey(req.registry.host, req.repository, req.reference);
    const credentialClass = credentialKey(req.credential);
    try {
      // While the tag backs off, the stored answer is served as usual, without asking the upstream again.
      const blocked = this.deps.pulls?.backoff.check(backoffKey, credentialClass);
      if (blocked) {
        metadata.touch(known.digest);
        return { ...known, source: 'stale', upstreamError: blocked };
      }
      let res: UpstreamResponse;
      try {
        res = await expectStatus(await this.deps.manifests.headUpstream(req), [200], 'manifest', req.registry.host);
      } catch (err) {
        if (countsForBackoff(err)) this.deps.pulls?.backoff.failure(backoffKey, err, credentialClass);
        // An air-gapped preload names a tag the upstream never had: the upstream's 404 does not undo the import.
        if (isOciError(err) && err.status === 404 && this.deps.preloadedAs?.(req.registry.host, req.repository, known.digest)) {
          return { ...known, source: 'store', upstreamError: err };
        }
        throw err;
      }
      await drain(res.body);
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
      return await this.fetch(req);
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

  /** GETs the tag's manifest upstream and points the tag at it. */
  private async fetch(req: ManifestRequest): Promise<ManifestAnswer> {
    const answer = await this.deps.manifests.fetchByTag(req);
    this.deps.metadata.putTag(req.registry.host, req.repository, req.reference, answer.digest);
    return answer;
  }
}

/** Upstream trouble during which a known tag answer may be served: unreachable, 5xx, timeouts, rate limits. */
function isUpstreamOutage(err: unknown): err is OciError {
  return isOciError(err) && (err.status >= 500 || err.code === 'TOOMANYREQUESTS');
}

function errSummary(err: unknown): { code?: string; message?: string } {
  return isOciError(err) ? { code: err.code, message: err.message } : { message: String(err) };
}

const MAX_TAG_LIST_BYTES = 16 * 1024 * 1024;

/** A tags/list request: the spec's paging parameters, and where the next page's Link must point. */
export interface TagQuery {
  n: string | undefined;
  last: string | undefined;
  /** This cache's path for the list, for the `Link` to the next page. */
  selfPath: string;
  /** containerd's `ns=`, kept in the next page's Link. */
  ns: string | undefined;
  signal?: AbortSignal;
}

/**
 * Tag lists, passed through from the upstream (they change all the time and are never stored), with the
 * client's credentials in the kubelet's order, paged here when the upstream ignores `n` and `last`.
 */
export class TagService {
  constructor(private readonly deps: { upstream: UpstreamClient; verifier: CredentialVerifier }) {}

  /** The repository's tags, one page. */
  async tags(access: Access, query: TagQuery): Promise<CacheReply> {
    const { registry, repository } = access;
    const upstreamQuery: Record<string, string> = {};
    if (query.n !== undefined) {
      if (!/^\d{1,6}$/.test(query.n)) throw new OciError('UNSUPPORTED', 'n must be a non-negative integer', { status: 400 });
      upstreamQuery.n = query.n;
    }
    if (query.last !== undefined) upstreamQuery.last = query.last;
    const { value: res } = await this.deps.verifier.tryUpstream(access, async (credential) => {
      const r = await this.deps.upstream.send({
        registry,
        method: 'GET',
        path: `/v2/${repository}/tags/list`,
        query: upstreamQuery,
        headers: { accept: 'application/json' },
        repository,
        ...(credential ? { credential } : {}),
        ...(query.signal ? { signal: query.signal } : {}),
      });
      return expectStatus(r, [200], 'tags', registry.host);
    });
    const body = await readCapped(res.body, MAX_TAG_LIST_BYTES, registry.host, () => new OciError('UNKNOWN', 'upstream tag list too large', { status: 502 }));
    const headers: Record<string, string> = { ...API_VERSION_HEADERS, 'content-type': 'application/json' };
    const page = paginateTags(body, upstreamQuery.n === undefined ? undefined : Number(upstreamQuery.n), upstreamQuery.last);
    const link =
      page?.next === undefined ? rewriteLink(firstHeader(res.headers.link), query) : nextLink(query, { n: upstreamQuery.n ?? '', last: page.next });
    if (link) headers.link = link;
    return { status: 200, headers, body: page?.body ?? body, cacheStatus: 'passthrough' };
  }
}

/**
 * Applies `n` and `last` to a tag list whose upstream ignored them (distribution 2.8 does); a list the upstream
 * already paged passes unchanged. `next` is the last tag of a page this cache cut short. Undefined: send as is.
 */
function paginateTags(body: Buffer, n: number | undefined, last: string | undefined): { body: Buffer; next?: string } | undefined {
  if (n === undefined && last === undefined) return undefined;
  let list: { name?: unknown; tags?: unknown };
  try {
    list = JSON.parse(body.toString('utf8')) as { name?: unknown; tags?: unknown };
  } catch {
    return undefined;
  }
  if (!Array.isArray(list.tags) || !list.tags.every((t): t is string => typeof t === 'string')) return undefined;
  // The spec's order for paging is lexical; `last` means "after this tag" in that order.
  let tags = [...list.tags].sort();
  if (last !== undefined) tags = tags.filter((t) => t > last);
  let next: string | undefined;
  if (n !== undefined && tags.length > n) {
    tags = tags.slice(0, n);
    next = tags.at(-1);
  }
  return { body: Buffer.from(JSON.stringify({ ...list, tags })), ...(next !== undefined ? { next } : {}) };
}

/** Points an upstream's pagination Link at this cache (same path, same ns) instead of the upstream. */
function rewriteLink(link: string | undefined, query: TagQuery): string | undefined {
  if (!link) return undefined;
  const m = /<([^>]+)>/.exec(link);
  if (!m) return undefined;
  const next = new URL(m[1] as string, 'http://upstream.invalid');
  const params: Record<string, string> = {};
  for (const key of ['n', 'last']) {
    const v = next.searchParams.get(key);
    if (v !== null) params[key] = v;
  }
  return nextLink(query, params);
}

/** A `rel="next"` Link to this cache's own path with these paging parameters (and the same ns). */
function nextLink(query: TagQuery, paging: Record<string, string>): string {
  const params = new URLSearchParams();
  for (const [key, v] of Object.entries(paging)) if (v !== '') params.set(key, v);
  if (query.ns) params.set('ns', query.ns);
  return `<${query.selfPath}?${params.toString()}>; rel="next"`;
}
