import { isOciError } from '../oci/errors.js';
import { StoredFileUnusable } from '../store/blob-store.js';
import { manifestHeaders } from '../oci/content-headers.js';
import type { Access, CredentialVerifier } from '../policy/verifier.js';
import type { ManifestAnswer, ManifestCache, ManifestRequest } from './manifests.js';
import { cacheStatusOf, type CacheReply } from './reply.js';
import type { TagCache } from './tags.js';

/** What a manifest request asks for, besides the reference. */
export interface ManifestQuery {
  method: 'GET' | 'HEAD';
  /** Media types the client accepts, parsed from its Accept headers. */
  accept: readonly string[];
}

/**
 * Manifests through the cache for one client. A manifest by digest is served from the store to a client a record
 * allows, and otherwise proven with the GET by digest a miss makes; a tag is resolved upstream with the kubelet's
 * credential order, and what the store knows stands in only where the policy lets this client have it.
 */
export class ManifestService {
  constructor(private readonly deps: { manifests: ManifestCache; tags: TagCache; verifier: CredentialVerifier }) {}

  /** Answers a GET or HEAD of `reference` (a tag, or a digest when `isDigest`) in `access`'s repository. */
  async manifest(access: Access, reference: string, isDigest: boolean, query: ManifestQuery): Promise<CacheReply> {
    const { manifests, tags, verifier } = this.deps;
    const { registry, repository } = access;
    const base = { registry, repository, reference, accept: [...query.accept], method: query.method } as const;
    let answer: ManifestAnswer;
    if (isDigest) {
      answer = await this.byDigest(access, base);
    } else {
      try {
        const { value, puller } = await verifier.tryUpstream(access, (credential) => tags.get({ ...base, ...(credential ? { credential } : {}) }));
        answer = value;
        // An upstream that just answered for these credentials verified them; a stored or stale answer did not.
        if (answer.source === 'upstream' || answer.source === 'revalidated') verifier.record(access, answer.digest, puller);
        else if (!verifier.allowedLocally(access, answer.digest)) {
          // A client without access gets what it would get for a tag the cache does not know: the upstream failure the
          // stale answer stands in for, or the upstream's own answer.
          if (answer.upstreamError) throw answer.upstreamError;
          answer = await this.byDigest(access, { ...base, reference: answer.digest });
        }
      } catch (err) {
        // A refused tag revalidation: what the store holds may still be this client's under the policy.
        const refused = isOciError(err) && (err.code === 'UNAUTHORIZED' || err.code === 'DENIED');
        const knownDigest = refused ? tags.lastKnownDigest(registry.host, repository, reference) : undefined;
        if (!knownDigest || !verifier.allowedLocally(access, knownDigest)) throw err;
        // By digest as any such request: a stored file found unusable is fetched with this client's credentials.
        answer = await this.byDigest(access, { ...base, reference: knownDigest });
      }
    }
    manifests.noteServed(registry.host, repository, answer.digest);
    return {
      status: 200,
      headers: manifestHeaders(answer),
      ...(query.method === 'HEAD' || !answer.bytes ? {} : { body: answer.bytes }),
      cacheStatus: cacheStatusOf(answer.source),
    };
  }

  /**
   * A manifest by digest: from the store for a client a record allows; for anyone else the upstream GET by digest a
   * miss makes, whether or not it is stored (its hashed body proves possession and the credential's access).
   */
  private async byDigest(access: Access, req: Omit<ManifestRequest, 'credential'>): Promise<ManifestAnswer> {
    const { manifests, verifier } = this.deps;
    // One row lookup per hit (a SELECT, or the lock holder's memory of the rows its deletes keep current): the row that
    // says the manifest is stored is the row that is served.
    const row = manifests.storedRow(req.reference);
    if (row && verifier.allowedLocally(access, req.reference)) {
      try {
        const answer = await manifests.serveStored(row, req.method);
        verifier.noteLocal();
        return answer;
      } catch (err) {
        // Its file was missing or corrupt and is gone with its row: fetched as on a miss.
        if (!(err instanceof StoredFileUnusable)) throw err;
      }
    }
    const { value, puller } = await verifier.prove(access, (credential) => manifests.fetchByDigest({ ...req, ...(credential ? { credential } : {}) }));
    verifier.record(access, value.digest, puller);
    return value;
  }
}
