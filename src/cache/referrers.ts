import { OciError } from '../oci/errors.js';
import { API_VERSION_HEADERS, firstHeader } from '../oci/content-headers.js';
import { MEDIA_TYPES } from '../oci/media-types.js';
import type { Access, CredentialVerifier } from '../policy/verifier.js';
import type { UpstreamClient } from '../upstream/client.js';
import { drain, expectStatus, readCapped } from '../upstream/response.js';
import type { CacheReply } from './reply.js';

const MAX_REFERRERS_BYTES = 16 * 1024 * 1024;

/** Referrers of a manifest, passed through from the upstream; never stored. */
export class ReferrerService {
  constructor(private readonly deps: { upstream: UpstreamClient; verifier: CredentialVerifier }) {}

  /** The referrers index of `digest`; an empty index where the upstream has no referrers API, as the spec says. */
  async referrers(access: Access, digest: string, query: { artifactType: string | undefined; signal?: AbortSignal }): Promise<CacheReply> {
    const { registry, repository } = access;
    const upstreamQuery: Record<string, string> = {};
    if (query.artifactType !== undefined) upstreamQuery.artifactType = query.artifactType;
    // Registries without the referrers API answer 404/405/400: per the spec the answer is then an empty index.
    const { value: res } = await this.deps.verifier.tryUpstream(access, async (credential) => {
      const r = await this.deps.upstream.send({
        registry,
        method: 'GET',
        path: `/v2/${repository}/referrers/${digest}`,
        query: upstreamQuery,
        headers: { accept: MEDIA_TYPES.ociIndex },
        repository,
        ...(credential ? { credential } : {}),
        ...(query.signal ? { signal: query.signal } : {}),
      });
      return expectStatus(r, [200, 400, 404, 405], 'referrers', registry.host);
    });
    const headers: Record<string, string> = { ...API_VERSION_HEADERS, 'content-type': MEDIA_TYPES.ociIndex };
    if (res.status !== 200) {
      await drain(res.body);
      return { status: 200, headers, body: Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: [] })), cacheStatus: 'passthrough' };
    }
    const body = await readCapped(res.body, MAX_REFERRERS_BYTES, registry.host, () => new OciError('UNKNOWN', 'upstream referrers index too large', { status: 502 }));
    const filtered = firstHeader(res.headers['oci-filters-applied']);
    if (filtered) headers['oci-filters-applied'] = filtered;
    return { status: 200, headers, body, cacheStatus: 'passthrough' };
  }
}
