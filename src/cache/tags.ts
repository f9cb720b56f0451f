import { OciError } from '../oci/errors.js';
import { API_VERSION_HEADERS, firstHeader } from '../oci/content-headers.js';
import type { Access, CredentialVerifier } from '../policy/verifier.js';
import type { UpstreamClient } from '../upstream/client.js';
import { expectStatus, readCapped } from '../upstream/response.js';
import type { CacheReply } from './reply.js';

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
