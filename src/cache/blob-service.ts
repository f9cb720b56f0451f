import type { Readable } from 'node:stream';
import { blobHeaders } from '../oci/content-headers.js';
import { parseRange } from '../oci/range.js';
import type { Access, CredentialVerifier } from '../policy/verifier.js';
import type { Puller } from '../db/pull-records.js';
import type { Credential } from '../upstream/credentials.js';
import type { BlobAnswer, BlobCache, BlobRequest } from './blobs.js';
import type { ManifestCache, ManifestRequest } from './manifests.js';
import { cacheStatusOf, type CacheReply } from './reply.js';

/** The credential a fill uses, and whether it is the node's (or none): then other nodes may be offered the blob. */
function withCredential(credential: Credential | undefined, puller: Puller): Pick<BlobRequest, 'credential' | 'nodeLevel'> {
  return { ...(credential ? { credential } : {}), nodeLevel: puller.kind === 'nodePodsAccessible' };
}

/** What a blob request asks for, besides the blob. */
export interface BlobQuery {
  method: 'GET' | 'HEAD';
  /** The client's `Range` header, as sent. */
  range: string | undefined;
  /** Aborted when the client goes away; ends waiting, never a fill other clients share. */
  signal?: AbortSignal;
}

/**
 * Blobs through the cache for one client: may it have the blob (the kubelet's order, via the verifier), and where
 * the bytes come from (the store, a running fill, or a fill of its own). The route never learns which.
 */
export class BlobService {
  constructor(private readonly deps: { blobs: BlobCache; manifests: ManifestCache; verifier: CredentialVerifier }) {}

  /** Answers a GET or HEAD of `digest` in `access`'s repository. */
  async blob(access: Access, digest: string, query: BlobQuery): Promise<CacheReply> {
    const { blobs, verifier } = this.deps;
    const req: BlobRequest = { registry: access.registry, repository: access.repository, digest };
    const allowance = verifier.blobAccess(access, digest);
    const headers = blobHeaders(digest);
    if (query.method === 'HEAD') {
      // A client no record allows gets the upstream's answer to it, never the store's: a HEAD hands over no bytes and
      // proves nothing, so it records nothing.
      const { value: head } = await verifier.tryUpstream(access, (credential) =>
        blobs.head({ ...req, ...(credential ? { credential } : {}) }, { upstreamOnly: !allowance.allowed, ...(query.signal ? { signal: query.signal } : {}) }),
      );
      if (head.size !== undefined) headers['content-length'] = String(head.size);
      return { status: 200, headers, cacheStatus: cacheStatusOf(head.source) };
    }
    let answer: BlobAnswer | undefined;
    if (!allowance.allowed && allowance.parent) {
      // The blob came through this repository: the client proves itself for a manifest here that references it, a GET
      // by digest accounted as this blob request (its back-off, its error codes), as a miss of the blob would be.
      const parent: ManifestRequest = { ...req, reference: allowance.parent, accept: [], method: 'HEAD' };
      const { puller } = await verifier.prove(access, (credential) => this.deps.manifests.fetchByDigest({ ...parent, ...(credential ? { credential } : {}) }, { digest }));
      verifier.record(access, allowance.parent, puller);
    } else if (!allowance.allowed) {
      // Nothing here vouches for the blob: the client's own upstream GET is the check, and its hashed body the proof.
      // With sharing on, a blob that a manifest the client is allowed lists may instead be what the cluster offers
      // (by default content that needed no tenant credential), hashed: the one upstream download per cluster.
      const listed = allowance.listed && blobs.sharing;
      const own = await verifier.prove(access, (credential, puller) => {
        const r = { ...req, ...withCredential(credential, puller) };
        return listed ? blobs.fetchListed(r) : blobs.fetchAsProof(r);
      });
      answer = own.value;
      if (!answer.committed) verifier.record(access, digest, own.puller);
      answer.committed?.then(() => verifier.record(access, digest, own.puller)).catch(() => undefined);
    }
    answer ??= blobs.stored(digest);
    answer ??= (await verifier.tryUpstream(access, (credential, puller) => blobs.get({ ...req, ...withCredential(credential, puller) }))).value;
    return this.bodyReply(answer, headers, query.range);
  }

  private async bodyReply(answer: BlobAnswer, headers: Record<string, string>, rangeHeader: string | undefined): Promise<CacheReply> {
    const cacheStatus = cacheStatusOf(answer.source);
    // Without a size known to be true, a range (its bounds, its total, a 416) waits for the fill to verify one.
    const size = answer.size ?? (rangeHeader ? await answer.verifiedSize() : undefined);
    const range = size === undefined ? undefined : parseRange(rangeHeader, size);
    if (range) {
      headers['content-length'] = String(range.end - range.start + 1);
      headers['content-range'] = `bytes ${range.start}-${range.end}/${size}`;
      return { status: 206, headers, body: answer.open(range.start, range.end), cacheStatus, bytesFrom: answer.bytesFrom };
    }
    if (answer.size !== undefined) headers['content-length'] = String(answer.size);
    const body: Readable = answer.open();
    return { status: 200, headers, body, cacheStatus, bytesFrom: answer.bytesFrom };
  }
}
