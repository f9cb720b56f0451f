import type { Logger } from 'pino';
import type { RegistryConfig } from '../config/load.js';
import type { Metadata } from '../db/queries.js';
import { OciError, isOciError } from '../oci/errors.js';
import { MANIFEST_MEDIA_TYPES } from '../oci/media-types.js';
import { drain, type UpstreamClient } from '../upstream/client.js';
import type { Credential } from '../upstream/credentials.js';
import { errorForUpstreamStatus } from '../upstream/errors.js';
import type { Allowlist } from './allowlist.js';
import type { NodeCredentials } from './node-credentials.js';
import { PullRecords, type Puller } from './records.js';
import type { Identity } from './tokens.js';

/** The kubelet's `imagePullCredentialsVerificationPolicy` values. */
export const VERIFICATION_POLICIES = ['NeverVerify', 'NeverVerifyPreloadedImages', 'NeverVerifyAllowListedImages', 'AlwaysVerify'] as const;
/** One verification policy. */
export type VerificationPolicy = (typeof VERIFICATION_POLICIES)[number];

/** A client asking for content of one repository. */
export interface Access {
  registry: RegistryConfig;
  repository: string;
  identity: Identity;
  /** Builds the 401 that makes a client present its credentials to the cache's token realm. */
  challenge: () => OciError;
}

/** One way to talk to the upstream on a client's behalf, and what success records. */
interface Attempt {
  credential: Credential | undefined;
  puller: Puller;
}

/** Outcome counters by policy and result, for logs and metrics. */
export type VerificationOutcome = 'local' | 'exempt' | 'verified' | 'denied' | 'challenged' | 'unreachable';

/**
 * Decides whether a client may be handed stored content, with the kubelet's `MustAttemptImagePull` order:
 * exempt by policy → `nodePodsAccessible` → a recorded credential → verify upstream (HEAD, no download).
 */
export class CredentialVerifier {
  constructor(
    private readonly deps: {
      policy: VerificationPolicy;
      allowlist: Allowlist;
      records: PullRecords;
      metadata: Metadata;
      upstream: UpstreamClient;
      nodeCredentials: NodeCredentials;
      log: Logger;
      onOutcome?: (policy: VerificationPolicy, outcome: VerificationOutcome) => void;
      /** Aborted at shutdown: verification requests must not outlive the process's deadline. */
      signal?: AbortSignal;
    },
  ) {}

  /** The configured policy. */
  get policy(): VerificationPolicy {
    return this.deps.policy;
  }

  /**
   * Whether stored `digest` may be served to this client without contacting the upstream. `preloadedExempt` is
   * false for a blob's own status: a blob is exempt only through a preloaded parent manifest.
   */
  allowedLocally(access: Access, digest: string, preloadedExempt = true): boolean {
    const { policy, records, allowlist } = this.deps;
    if (policy === 'NeverVerify') return true;
    const record = records.get(access.registry.host, access.repository, digest);
    if (record?.preloaded && preloadedExempt) {
      if (policy === 'NeverVerifyPreloadedImages') return true;
      if (policy === 'NeverVerifyAllowListedImages' && allowlist.matches({ registry: access.registry.host, repository: access.repository })) return true;
    }
    if (record?.nodePodsAccessible) return true;
    return access.identity.kind === 'credential' && PullRecords.includes(record, access.identity.hash);
  }

  /** Lets the client have stored manifest `digest`, verifying its credentials upstream when no record covers them. */
  async authorizeManifest(access: Access, digest: string): Promise<void> {
    if (this.allowedLocally(access, digest)) {
      this.count(this.policy === 'NeverVerify' ? 'exempt' : 'local');
      return;
    }
    await this.verifyUpstream(access, 'manifests', digest, digest, false);
  }

  /**
   * Lets the client have blob `digest` (stored or being fetched): allowed if allowed for a manifest of this
   * repository that references it, else verified upstream like a manifest. Returns false when nothing is known of
   * the blob at all, so the caller's upstream fetch is itself the verification.
   */
  async authorizeBlob(access: Access, digest: string, known: boolean): Promise<boolean> {
    if (this.policy === 'NeverVerify') return true;
    const { metadata } = this.deps;
    const { host } = access.registry;
    // A parent vouches for the blob only if the blob itself came through this repository: a manifest anyone can
    // publish may list any digest, and some registries accept manifests whose blobs they do not hold there.
    const linked = metadata.isLinked(host, access.repository, digest);
    const parents = metadata.parentsInRepository(host, access.repository, digest);
    const parentAllowed = parents.find((p) => this.allowedLocally(access, p));
    if ((parentAllowed && linked) || this.allowedLocally(access, digest, false)) {
      this.count('local');
      return true;
    }
    if (parents.length === 0 && !known) return false;
    if (parentAllowed || parents.length === 0) {
      // Vouched for by a parent but not yet seen here, or no manifest here explains it: ask the upstream about
      // this blob in this repository (whether it is public is unknown, so anonymous clients are tried as such).
      await this.verifyUpstream(access, 'blobs', digest, digest, true);
    } else {
      await this.verifyUpstream(access, 'manifests', parents[0] as string, parents[0] as string, false);
      if (!linked) await this.verifyUpstream(access, 'blobs', digest, digest, true);
    }
    return true;
  }

  /**
   * Runs an upstream operation with the kubelet's credential order: the client's credential, then node-wide
   * ones (or anonymous when there are none). Refusals (401/403) move to the next; a client that sent nothing
   * and was refused everywhere is challenged for credentials.
   */
  async tryUpstream<T>(access: Access, operation: (credential: Credential | undefined) => Promise<T>): Promise<{ value: T; puller: Puller }> {
    let lastRefusal: OciError | undefined;
    for (const attempt of await this.attempts(access)) {
      try {
        return { value: await operation(attempt.credential), puller: attempt.puller };
      } catch (err) {
        if (isOciError(err) && (err.code === 'UNAUTHORIZED' || err.code === 'DENIED')) {
          lastRefusal = err;
          continue;
        }
        throw err;
      }
    }
    if (access.identity.kind === 'none') {
      this.count('challenged');
      throw access.challenge();
    }
    this.count('denied');
    throw lastRefusal ?? new OciError('UNAUTHORIZED', 'credentials were refused by the upstream');
  }

  /** Records a confirmed pull (skipped under NeverVerify, which keeps no records, like the feature gate off). */
  record(access: Access, digest: string, puller: Puller): void {
    if (this.policy === 'NeverVerify') return;
    this.deps.records.recordSuccess(access.registry.host, access.repository, digest, puller);
  }

  /**
   * Verifies the client's credentials with a HEAD (never a download). A client that sent nothing is challenged
   * at once when its record already says anonymous access is not established (`probeAnonymously` false);
   * otherwise it is tried anonymously (or with node-wide credentials) first and challenged only if refused.
   */
  private async verifyUpstream(access: Access, kind: 'manifests' | 'blobs', reference: string, recordDigest: string, probeAnonymously: boolean): Promise<void> {
    if (access.identity.kind === 'none' && !probeAnonymously) {
      this.count('challenged');
      throw access.challenge();
    }
    const log = this.deps.log.child({ registry: access.registry.host, repository: access.repository, digest: recordDigest });
    try {
      const { puller } = await this.tryUpstream(access, async (credential) => {
        const res = await this.deps.upstream.send({
          registry: access.registry,
          method: 'HEAD',
          path: `/v2/${access.repository}/${kind}/${reference}`,
          headers: kind === 'manifests' ? { accept: MANIFEST_MEDIA_TYPES.join(', ') } : {},
          repository: access.repository,
          ...(credential ? { credential } : {}),
          ...(this.deps.signal ? { signal: this.deps.signal } : {}),
        });
        await drain(res.body);
        if (res.status !== 200) throw errorForUpstreamStatus(res.status, kind === 'manifests' ? 'manifest' : 'blob', access.registry.host);
      });
      this.record(access, recordDigest, puller);
      if (kind === 'blobs') this.deps.metadata.linkRepository(access.registry.host, access.repository, recordDigest);
      this.count('verified');
      log.info({ puller: puller.kind }, 'credentials verified upstream');
    } catch (err) {
      if (isOciError(err) && (err.code === 'UNAUTHORIZED' || err.code === 'DENIED' || err.status === 404)) {
        // A definite answer: refused, or the upstream does not have it under this repository.
        log.info({ code: err.code }, 'credential verification refused');
        throw err;
      }
      // Fail closed: content the client was not proven to be allowed to see is not served.
      this.count('unreachable');
      log.warn({ err: isOciError(err) ? { code: err.code, message: err.message } : { message: String(err) } }, 'credential verification impossible; refusing');
      throw new OciError('UNAVAILABLE', 'cannot verify credentials with the upstream registry', { status: 503, cause: err });
    }
  }

  private async attempts(access: Access): Promise<Attempt[]> {
    const image = `${access.registry.host}/${access.repository}`;
    const node: Attempt[] = [];
    const configured = access.registry.username !== undefined && access.registry.password !== undefined;
    if (configured) node.push({ credential: { username: access.registry.username as string, password: access.registry.password as string }, puller: { kind: 'nodePodsAccessible' } });
    for (const n of await this.deps.nodeCredentials.lookup(image)) node.push({ credential: n.credential, puller: { kind: 'nodePodsAccessible' } });
    if (access.identity.kind === 'credential') {
      return [{ credential: access.identity.credential, puller: { kind: 'credential', hash: access.identity.hash } }, ...node];
    }
    return node.length > 0 ? node : [{ credential: undefined, puller: { kind: 'nodePodsAccessible' } }];
  }

  private count(outcome: VerificationOutcome): void {
    this.deps.onOutcome?.(this.policy, outcome);
  }
}
