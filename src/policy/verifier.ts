import type { Logger } from 'pino';
import type { Allowlist } from '../config/allowlist.js';
import type { RegistryConfig } from '../config/load.js';
import type { VerificationPolicy } from '../config/schema.js';
import type { Metadata } from '../db/content-index.js';
import { OciError, isOciError } from '../oci/errors.js';
import type { Credential } from '../upstream/credentials.js';
import type { NodeCredentials } from './node-credentials.js';
import type { PullRecords, Puller } from '../db/pull-records.js';
import type { Identity } from './tokens.js';

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

/** Whether every pod on the node may pull from a repository: the policy verifies nothing, or a record says so. */
export function repositoryIsOpen(policy: VerificationPolicy, records: Pick<PullRecords, 'hasNodePodsAccessible'>, registry: string, repository: string): boolean {
  return policy === 'NeverVerify' || records.hasNodePodsAccessible(registry, repository);
}

/**
 * Decides whether a client may be handed stored content, with the kubelet's `MustAttemptImagePull` order:
 * exempt by policy → `nodePodsAccessible` → a recorded credential → prove it upstream: the GET by digest a miss
 * would make, with the client's credential, whose body must hash to the digest (possession, not an upstream's word).
 */
export class CredentialVerifier {
  constructor(
    private readonly deps: {
      policy: VerificationPolicy;
      allowlist: Allowlist;
      records: PullRecords;
      metadata: Metadata;
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
    const record = records.access(access.registry.host, access.repository, digest, access.identity.kind === 'credential' ? access.identity.hash : undefined);
    if (record?.preloaded && preloadedExempt) {
      if (policy === 'NeverVerifyPreloadedImages') return true;
      if (policy === 'NeverVerifyAllowListedImages' && allowlist.matches({ registry: access.registry.host, repository: access.repository })) return true;
    }
    return record?.nodePodsAccessible === true || record?.credential === true;
  }

  /**
   * Whether anyone who can reach the cache on this node may learn that this repository is pulled here: every pod may
   * pull from it (a `nodePodsAccessible` record), or the policy verifies nothing.
   */
  repositoryIsOpen(registry: string, repository: string): boolean {
    return repositoryIsOpen(this.policy, this.deps.records, registry, repository);
  }

  /** Counts an answer from the store that a record (or the policy) allowed. */
  noteLocal(): void {
    this.count(this.policy === 'NeverVerify' ? 'exempt' : 'local');
  }

  /**
   * Whether blob `digest` may be served to this client from the store (or a running fill) without asking the upstream:
   * its own pull record here, or a manifest of this repository the client is allowed that references it — but only
   * when the blob itself came through this repository (a fill hashed it here): a manifest anyone can publish may list
   * any digest, and a registry may accept manifests whose blobs it does not hold there. Otherwise `parent` names a
   * stored manifest of this repository that vouches for the blob once the client is proven for it.
   *
   * `listed`: a manifest of this repository that the client is allowed lists the blob, although the blob did not come
   * through here. Such a client may take the blob's bytes from another node (which offers by default only content
   * that needed no tenant credential), hashed, instead of downloading it again: see README, Sharing between nodes.
   */
  blobAccess(access: Access, digest: string): { allowed: true } | { allowed: false; parent: string | undefined; listed: boolean } {
    if (this.policy === 'NeverVerify') return { allowed: true };
    const { metadata } = this.deps;
    const { host } = access.registry;
    const linked = metadata.isLinked(host, access.repository, digest);
    const described = metadata.parentsInRepository(host, access.repository, digest);
    const parents = linked ? described : [];
    if (this.allowedLocally(access, digest, false) || parents.some((p) => this.allowedLocally(access, p))) {
      this.count('local');
      return { allowed: true };
    }
    return { allowed: false, parent: parents[0], listed: !linked && described.some((p) => this.allowedLocally(access, p)) };
  }

  /**
   * Proves a client's access upstream for content no record lets it have: `operation` is the same upstream GET a
   * cache miss makes (by digest, its body hashed), with the kubelet's credential order — so what a client without
   * access sees never depends on whether the content is stored. The caller records the returned puller.
   */
  async prove<T>(access: Access, operation: (credential: Credential | undefined, puller: Puller) => Promise<T>): Promise<{ value: T; puller: Puller }> {
    // NeverVerify verifies nothing: its upstream fetches are plain misses.
    if (this.policy === 'NeverVerify') return this.tryUpstream(access, operation);
    try {
      const proven = await this.tryUpstream(access, operation);
      this.count('verified');
      return proven;
    } catch (err) {
      if (!isOciError(err) || (err.code !== 'UNAUTHORIZED' && err.code !== 'DENIED' && err.status >= 500)) this.count('unreachable');
      throw err;
    }
  }

  /**
   * Runs an upstream operation with the kubelet's credential order: the client's credential, then node-wide
   * ones (or anonymous when there are none). Refusals (401/403) move to the next; a client that sent nothing
   * and was refused everywhere is challenged for credentials.
   */
  async tryUpstream<T>(access: Access, operation: (credential: Credential | undefined, puller: Puller) => Promise<T>): Promise<{ value: T; puller: Puller }> {
    let lastRefusal: OciError | undefined;
    for (const attempt of await this.attempts(access)) {
      try {
        return { value: await operation(attempt.credential, attempt.puller), puller: attempt.puller };
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
