import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { RegistryConfig } from '../config/load.js';
import type { Metadata } from '../db/content-index.js';
import { OciError, isOciError } from '../oci/errors.js';
import type { ParsedManifestJson } from '../oci/media-types.js';
import type { BlobStore } from '../store/blob-store.js';
import { drain, type UpstreamClient } from '../upstream/client.js';
import { credentialKey, type Credential } from '../upstream/credentials.js';
import { errorForUpstreamStatus } from '../upstream/errors.js';
import { firstHeader } from '../oci/content-headers.js';
import { BlobFill } from './fill.js';
import { imageKeys, type PullIntents, type UpstreamPulls } from './upstream-pulls.js';
import { countsForBackoff } from '../limiter/backoff.js';
import { digestKey } from '../limiter/keys.js';
import type { PullLease } from '../limiter/pull-limiter.js';
import type { SharedBlob, SharedBlobs, ShareScope } from '../peers/listener.js';
import type { BlobSources, FillSource, SourceBody } from './sources.js';

export type { FillSource } from './sources.js';

/** Where a blob answer comes from, for logs and metrics. */
export type BlobSource = 'store' | 'inflight' | 'upstream' | 'peer';

/** A blob ready to be served: its size and a way to stream any range of it. */
export interface BlobAnswer {
  digest: string;
  /**
   * Total size when known to be true: stored or verified, or as a stored manifest of the repository describes it.
   * Undefined while an upstream fill runs without one: an upstream Content-Length is a claim, not a size.
   */
  size: number | undefined;
  source: BlobSource;
  /** Where the body's bytes come from (a joined fill's source, not 'inflight'). */
  bytesFrom: 'store' | 'upstream' | 'peer';
  /** Streams `[start, end]` inclusive. */
  open(start?: number, end?: number): Readable;
  /** The verified size, once the content is verified (at once for a stored blob); rejects with the fill's failure. */
  verifiedSize(): Promise<number>;
  /** For a blob being fetched: resolves once it is committed to the store. */
  committed?: Promise<void>;
}

/** Where a blob request goes upstream. */
export interface BlobRequest {
  registry: RegistryConfig;
  repository: string;
  digest: string;
  credential?: Credential;
  /**
   * The credential is not a tenant's (anonymous, configured for the registry, or the node's own): any pod on this
   * node could pull the blob, so other nodes may be offered it (`nodePodsAccessible` in the kubelet's terms).
   */
  nodeLevel?: boolean;
}

/** A fill under way, and whose upstream answer it is: registry, repository and credential class. */
interface RunningFill {
  fill: BlobFill;
  registry: string;
  repository: string;
  origin: string;
  /** Fetched without a tenant credential (BlobRequest.nodeLevel): offered to any reader, locally or on other nodes. */
  nodeOpen: boolean;
  /** Other nodes may read it: node-open, or any with peerSharePrivateLayers. */
  shareable: boolean;
  /** Where its bytes come from, once its source answered. */
  source: FillSource;
  startedAt: number;
}

/** A fill in progress as the status page shows it. */
export interface FillProgress {
  digest: string;
  registry: string;
  repository: string;
  /** Bytes written so far. */
  bytes: number;
  /** The size when known (verified, promised by a stored manifest, or the source's Content-Length). */
  size: number | undefined;
  source: FillSource;
  /** Clients reading it as it grows. */
  readers: number;
  startedAt: number;
}

/** Who an upstream answer for a blob was for: requests with the same origin would get the same answer. */
function originOf(req: BlobRequest): string {
  return `${req.registry.host}/${req.repository}|${credentialKey(req.credential)}`;
}

/** Pull-through blobs: serve from the store, else fill once from upstream while streaming to every waiting client. */
export class BlobCache implements SharedBlobs {
  /** Fills under way, by digest (more than one only while clients not yet allowed the blob prove access). */
  private readonly fills = new Map<string, RunningFill[]>();
  /** Open reads of stored blobs, by digest. */
  private readonly serving = new Map<string, number>();
  /** Each fill's whole task, bookkeeping included, so shutdown can wait for it. */
  private readonly tasks = new Set<Promise<void>>();
  /** Aborts every running fill at shutdown. */
  private readonly shutdownController = new AbortController();

  constructor(
    private readonly deps: {
      store: BlobStore;
      metadata: Metadata;
      upstream: UpstreamClient;
      /** Where a missing blob's bytes come from (other nodes, the upstream). */
      sources: BlobSources;
      log: Logger;
      fillTimeoutMs: number;
      intents?: PullIntents;
      /** Called when a fill ends, with the bytes it took and how many of them another node gave. */
      onFillEnd?: (registry: string, bytes: number, fromPeer: number) => void;
      pulls?: UpstreamPulls;
      /** Offer other nodes blobs that needed a tenant credential too (off by default; see README). */
      sharePrivateLayers?: boolean;
    },
  ) {}

  /** Whether a blob is being downloaded or served right now (eviction must leave it alone). */
  isBusy(digest: string): boolean {
    return this.fills.has(digest) || (this.serving.get(digest) ?? 0) > 0;
  }

  /**
   * Answers a GET for a client allowed to have the blob: stored, joined to a running fill from the same registry
   * (another registry's answer could be a wrong body, failing this client), or a new fill.
   */
  async get(req: BlobRequest): Promise<BlobAnswer> {
    const tried = new Set<BlobFill>();
    for (;;) {
      const stored = this.stored(req.digest);
      if (stored) return stored;
      const running = this.fills.get(req.digest)?.find((r) => r.registry === req.registry.host && !tried.has(r.fill));
      // This client is allowed the blob: another node's copy may serve it.
      if (!running) return this.fetchOwn(req, true);
      tried.add(running.fill);
      try {
        await running.fill.ready;
      } catch (err) {
        // A fill the upstream refused or does not serve to its starter (another repository or credential) says
        // nothing about this client, which asks for itself.
        if (isOciError(err) && (err.status === 401 || err.status === 403 || err.status === 404)) continue;
        throw err;
      }
      return this.answerFor(running, 'inflight');
    }
  }

  /**
   * Answers a GET for a client not (yet) allowed to have the blob: its own upstream GET, with its credential through
   * its repository, is the access check whatever the store holds, and the verified body is the proof that this
   * registry holds the blob there. Requests with the same credential and repository join that GET (they would get
   * the same answer) instead of asking again; nobody else's fill or stored copy answers for them.
   */
  async fetchAsProof(req: BlobRequest): Promise<BlobAnswer> {
    const origin = originOf(req);
    const same = this.fills.get(req.digest)?.find((r) => r.origin === origin && r.fill.state !== 'failed');
    if (!same) return this.fetchOwn(req, false);
    await same.fill.ready;
    return this.answerFor(same, 'inflight');
  }

  /** Whether other nodes are asked before the upstream. */
  get sharing(): boolean {
    return this.deps.sources.sharing;
  }

  /**
   * Answers a GET for a client whom a manifest it is allowed lists the blob for, although the blob did not come
   * through its repository (sharing on only): what this node would offer another node (stored or filling content that
   * needed no tenant credential, or any with peerSharePrivateLayers), else a fill that asks the cluster first and
   * otherwise is the client's own upstream GET.
   */
  async fetchListed(req: BlobRequest): Promise<BlobAnswer> {
    // Only node-open content, whatever peerSharePrivateLayers says: the opt-in is about what other nodes may ask, and
    // a manifest anyone can publish may list a private layer's digest.
    if (this.deps.metadata.getBlob(req.digest)?.nodeOpen) {
      const stored = this.stored(req.digest);
      if (stored) return stored;
    }
    const running = this.fills.get(req.digest)?.find((r) => r.nodeOpen && r.registry === req.registry.host && r.fill.state !== 'failed');
    if (running) {
      await running.fill.ready;
      return this.answerFor(running, 'inflight');
    }
    return this.fetchOwn(req, 'open-only');
  }

  private async fetchOwn(req: BlobRequest, peersAllowed: boolean | 'open-only'): Promise<BlobAnswer> {
    const running = this.startFill(req, peersAllowed);
    await running.fill.ready;
    return this.answerFor(running, running.source);
  }

  private answerFor(running: RunningFill, source: BlobSource): BlobAnswer {
    const fill = running.fill;
    return {
      digest: fill.digest,
      size: fill.size,
      source,
      bytesFrom: running.source,
      open: (start, end) => fill.createReader(start, end),
      verifiedSize: () => fill.verification.then(() => fill.written),
      committed: fill.done,
    };
  }

  /**
   * Answers a HEAD without reading or fetching any body. `upstreamOnly` (a client not yet authorized for the blob)
   * never answers from the store or a running fill: the upstream's answer to this client is the authorization.
   */
  async head(req: BlobRequest, options: { upstreamOnly?: boolean; signal?: AbortSignal } = {}): Promise<{ size: number | undefined; source: BlobSource }> {
    const signal = options.signal;
    if (!options.upstreamOnly) {
      const row = this.deps.metadata.getBlob(req.digest);
      if (row) return { size: row.size, source: 'store' };
      const fill = this.fills.get(req.digest)?.find((r) => r.registry === req.registry.host)?.fill;
      if (fill) {
        try {
          await fill.ready;
          return { size: fill.size, source: 'inflight' };
        } catch {
          // Another client's refused fill: ask the upstream for this one.
        }
      }
    }
    const res = await this.deps.upstream.send({
      registry: req.registry,
      method: 'HEAD',
      path: `/v2/${req.repository}/blobs/${req.digest}`,
      repository: req.repository,
      ...(req.credential ? { credential: req.credential } : {}),
      ...(signal ? { signal } : {}),
    });
    await drain(res.body);
    if (res.status !== 200) throw errorForUpstreamStatus(res.status, 'blob', req.registry.host, firstHeader(res.headers['retry-after']));
    // The upstream's Content-Length is a claim nothing verified: only a stored manifest's size is announced.
    return { size: await this.describedSize(req), source: 'upstream' };
  }

  /**
   * The blob's size as the stored manifests of its repository describe it, when they agree: those manifests were
   * verified against their digests, so their descriptors are the sizes the client will check the blob against.
   */
  private async describedSize(req: BlobRequest): Promise<number | undefined> {
    const sizes = new Set<number>();
    for (const parent of this.deps.metadata.parentsInRepository(req.registry.host, req.repository, req.digest)) {
      let parsed: ParsedManifestJson;
      try {
        parsed = JSON.parse((await this.deps.store.readSmall(parent)).toString('utf8')) as ParsedManifestJson;
      } catch {
        continue; // evicted meanwhile, or not a manifest we read: it promises nothing
      }
      for (const d of [parsed.config, ...(Array.isArray(parsed.layers) ? parsed.layers : [])]) {
        if (d?.digest === req.digest && Number.isSafeInteger(d.size) && (d.size as number) >= 0) sizes.add(d.size as number);
      }
    }
    return sizes.size === 1 ? [...sizes][0] : undefined;
  }

  /** A stored blob's answer, when the store has it. */
  stored(digest: string): BlobAnswer | undefined {
    const row = this.deps.metadata.getBlob(digest);
    if (!row) return undefined;
    this.deps.metadata.touch(digest);
    const store = this.deps.store;
    const serving = this.serving;
    return {
      digest,
      size: row.size,
      source: 'store',
      bytesFrom: 'store',
      verifiedSize: () => Promise.resolve(row.size),
      open: (start, end) => {
        const stream = store.openRead(digest, start, end);
        serving.set(digest, (serving.get(digest) ?? 0) + 1);
        stream.once('close', () => {
          const left = (serving.get(digest) ?? 1) - 1;
          if (left <= 0) serving.delete(digest);
          else serving.set(digest, left);
        });
        return stream;
      },
    };
  }

  /** Fills under way, for the status page; reads only. */
  fillsInProgress(): FillProgress[] {
    return [...this.fills.values()].flat().map(({ fill, registry, repository, source, startedAt }) => ({
      digest: fill.digest,
      registry,
      repository,
      bytes: fill.written,
      size: fill.size ?? fill.expectedSize,
      source,
      // Each reader of a growing fill listens for its 'change' events until it ends.
      readers: fill.listenerCount('change'),
      startedAt,
    }));
  }

  /** Number of fills under way. */
  get activeFills(): number {
    let n = 0;
    for (const running of this.fills.values()) n += running.length;
    return n;
  }

  /** Resolves when every running fill has ended and recorded its outcome (for tests and shutdown). */
  async settle(): Promise<void> {
    while (this.tasks.size > 0) await Promise.allSettled([...this.tasks]);
  }

  /** Aborts running fills (their partial files are discarded) and waits until they have cleaned up. */
  async shutdown(): Promise<void> {
    this.shutdownController.abort(new Error('registry-cache is shutting down'));
    await this.settle();
  }

  /**
   * A blob another node may read (SharedBlobs): a running fill or a stored blob that needed no tenant credential,
   * or any with peerSharePrivateLayers. Read-only: nothing here triggers an upstream request.
   */
  find(digest: string, scope: ShareScope = {}): SharedBlob | undefined {
    const offered = (nodeOpen: boolean): boolean => nodeOpen || (this.deps.sharePrivateLayers === true && !scope.openOnly);
    // A fill in progress is unverified: only a reader fetching from the same registry may stream it.
    const running = this.fills.get(digest)?.find((r) => offered(r.nodeOpen) && (!scope.registry || r.registry === scope.registry) && r.fill.state !== 'failed');
    if (running) return { size: running.fill.size, open: (start, end) => running.fill.createReader(start, end) };
    const row = this.deps.metadata.getBlob(digest);
    // Manifests are never shared: other nodes fetch their own (they carry the tags and the access checks).
    if (!row || !offered(row.nodeOpen) || this.deps.metadata.getManifest(digest)) return undefined;
    return this.stored(digest);
  }

  private startFill(req: BlobRequest, peersAllowed: boolean | 'open-only'): RunningFill {
    const { store, metadata, log } = this.deps;
    const fill = new BlobFill(req.digest, store);
    const nodeOpen = req.nodeLevel === true;
    const shareable = nodeOpen || this.deps.sharePrivateLayers === true;
    // Registered before the cluster is asked, so a node pointed at this one finds the fill, never a 404.
    const running: RunningFill = { fill, registry: req.registry.host, repository: req.repository, origin: originOf(req), nodeOpen, shareable, source: 'upstream', startedAt: Date.now() };
    this.fills.set(req.digest, [...(this.fills.get(req.digest) ?? []), running]);
    // The fill owns its lifetime: a client that disconnects detaches its reader, the download goes on.
    const signal = AbortSignal.any([AbortSignal.timeout(this.deps.fillTimeoutMs), this.shutdownController.signal]);
    const flog = log.child({ registry: req.registry.host, repository: req.repository, digest: req.digest });
    const intent = this.deps.intents?.begin(req.registry.host, req.repository, req.digest);
    const pulls = this.deps.pulls;
    const backoffKey = digestKey(req.registry.host, req.repository, req.digest);
    const credentialClass = credentialKey(req.credential);
    // The image's pull slot is held for the whole transfer, whether the bytes come from the upstream or a peer.
    let lease: PullLease | undefined;
    let opened: SourceBody | undefined;
    const task = fill
      .run(
        async () => {
          const blocked = pulls?.backoff.check(backoffKey, credentialClass);
          if (blocked) throw blocked;
          lease = await pulls?.limiter.acquire(imageKeys(this.deps.metadata, req.registry.host, req.repository, req.digest), signal);
          const described = await this.describedSize(req);
          opened = await this.deps.sources.open({
            registry: req.registry,
            repository: req.repository,
            digest: req.digest,
            ...(req.credential ? { credential: req.credential } : {}),
            described,
            peersAllowed: peersAllowed !== false,
            openOnly: peersAllowed === 'open-only',
            shareable,
            signal,
          });
          running.source = opened.source;
          return { body: opened.body, size: opened.size, promised: described };
        },
        (size) => {
          metadata.insertBlob(req.digest, size, null, nodeOpen);
          // The link says this repository's upstream served the blob: not so for bytes that all came from a peer.
          if (!opened || opened.fromPeer < size) metadata.linkRepository(req.registry.host, req.repository, req.digest);
        },
      )
      .then(() => {
        lease?.release();
        const committed = fill.state === 'committed';
        opened?.settle(committed ? 'committed' : 'failed', fill.error);
        // A peer's bad bytes say nothing about the upstream: no back-off for them.
        if (committed) pulls?.backoff.success(backoffKey, credentialClass);
        else if (countsForBackoff(fill.error) && !opened?.fromPeer) pulls?.backoff.failure(backoffKey, fill.error, credentialClass);
        this.deps.onFillEnd?.(req.registry.host, fill.written, opened?.fromPeer ?? 0);
        if (committed) flog.info({ size: fill.written, source: running.source }, 'blob stored');
        else flog.warn({ err: fill.error, source: running.source }, 'blob fill failed');
      })
      .catch((err: unknown) => flog.error({ err }, 'blob fill bookkeeping failed'))
      .finally(() => {
        const left = (this.fills.get(req.digest) ?? []).filter((r) => r !== running);
        if (left.length > 0) this.fills.set(req.digest, left);
        else this.fills.delete(req.digest);
        if (intent !== undefined) this.deps.intents?.end(intent);
        this.tasks.delete(task);
      });
    this.tasks.add(task);
    return running;
  }
}
