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
import { withIdleTimeout } from '../upstream/idle-timeout.js';

/** Where a blob answer comes from, for logs and metrics. */
export type BlobSource = 'store' | 'inflight' | 'upstream';

/** A blob ready to be served: its size and a way to stream any range of it. */
export interface BlobAnswer {
  digest: string;
  /**
   * Total size when known to be true: stored or verified, or as a stored manifest of the repository describes it.
   * Undefined while an upstream fill runs without one: an upstream Content-Length is a claim, not a size.
   */
  size: number | undefined;
  source: BlobSource;
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
}

/** A fill under way, and whose upstream answer it is: registry, repository and credential class. */
interface RunningFill {
  fill: BlobFill;
  registry: string;
  repository: string;
  origin: string;
  /** Where its bytes come from. */
  source: FillSource;
  startedAt: number;
}

/** Where a fill's bytes come from. */
export type FillSource = 'upstream' | 'peer';

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
export class BlobCache {
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
      log: Logger;
      fillTimeoutMs: number;
      intents?: PullIntents;
      /** Called when a fill ends, with the bytes it downloaded. */
      onFillEnd?: (registry: string, bytes: number) => void;
      pulls?: UpstreamPulls;
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
      if (!running) return this.fetchOwn(req);
      tried.add(running.fill);
      try {
        await running.fill.ready;
      } catch (err) {
        // A fill the upstream refused or does not serve to its starter (another repository or credential) says
        // nothing about this client, which asks for itself.
        if (isOciError(err) && (err.status === 401 || err.status === 403 || err.status === 404)) continue;
        throw err;
      }
      return this.answerFor(running.fill, 'inflight');
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
    if (!same) return this.fetchOwn(req);
    await same.fill.ready;
    return this.answerFor(same.fill, 'inflight');
  }

  private async fetchOwn(req: BlobRequest): Promise<BlobAnswer> {
    const fill = this.startFill(req);
    await fill.ready;
    return this.answerFor(fill, 'upstream');
  }

  private answerFor(fill: BlobFill, source: BlobSource): BlobAnswer {
    return {
      digest: fill.digest,
      size: fill.size,
      source,
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

  private startFill(req: BlobRequest): BlobFill {
    const { store, metadata, upstream, log } = this.deps;
    const fill = new BlobFill(req.digest, store);
    const running: RunningFill = { fill, registry: req.registry.host, repository: req.repository, origin: originOf(req), source: 'upstream', startedAt: Date.now() };
    this.fills.set(req.digest, [...(this.fills.get(req.digest) ?? []), running]);
    // The fill owns its lifetime: a client that disconnects detaches its reader, the download goes on.
    const signal = AbortSignal.any([AbortSignal.timeout(this.deps.fillTimeoutMs), this.shutdownController.signal]);
    const flog = log.child({ registry: req.registry.host, repository: req.repository, digest: req.digest });
    const intent = this.deps.intents?.begin(req.registry.host, req.repository, req.digest);
    const pulls = this.deps.pulls;
    const backoffKey = digestKey(req.registry.host, req.repository, req.digest);
    const credentialClass = credentialKey(req.credential);
    // The image's pull slot is held for the whole transfer, not just until the upstream answers.
    let lease: PullLease | undefined;
    const task = fill
      .run(
        async () => {
          const blocked = pulls?.backoff.check(backoffKey, credentialClass);
          if (blocked) throw blocked;
          lease = await pulls?.limiter.acquire(imageKeys(this.deps.metadata, req.registry.host, req.repository, req.digest), signal);
          const described = await this.describedSize(req);
          const res = await upstream.send({
            registry: req.registry,
            method: 'GET',
            path: `/v2/${req.repository}/blobs/${req.digest}`,
            repository: req.repository,
            signal,
            ...(req.credential ? { credential: req.credential } : {}),
          });
          if (res.status !== 200) {
            await drain(res.body);
            throw errorForUpstreamStatus(res.status, 'blob', req.registry.host, firstHeader(res.headers['retry-after']));
          }
          const declared = res.headers['content-length'];
          const length = declared === undefined ? undefined : Number(declared);
          const claimed = length !== undefined && Number.isSafeInteger(length) && length >= 0 ? length : undefined;
          if (described !== undefined && claimed !== undefined && claimed !== described) {
            await drain(res.body);
            throw new OciError('SIZE_INVALID', 'upstream Content-Length does not match the manifest', {
              status: 502,
              detail: { digest: req.digest, size: described, upstreamSize: claimed },
            });
          }
          const watched = withIdleTimeout(res.body, req.registry.transport.idleTimeoutMs, req.registry.host);
          const body = pulls?.bandwidth ? pulls.bandwidth.throttle(watched) : watched;
          return { body, size: described ?? claimed, promised: described };
        },
        (size) => {
          metadata.insertBlob(req.digest, size, null);
          metadata.linkRepository(req.registry.host, req.repository, req.digest);
        },
      )
      .then(() => {
        lease?.release();
        if (fill.state === 'committed') pulls?.backoff.success(backoffKey, credentialClass);
        else if (countsForBackoff(fill.error)) pulls?.backoff.failure(backoffKey, fill.error, credentialClass);
        this.deps.onFillEnd?.(req.registry.host, fill.written);
        if (fill.state === 'committed') flog.info({ size: fill.written }, 'blob stored');
        else flog.warn({ err: fill.error }, 'blob fill failed');
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
    return fill;
  }
}
