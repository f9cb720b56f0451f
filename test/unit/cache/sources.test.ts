import { randomBytes } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { afterEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { BlobSources, type PeerSource, type SourceRequest } from '../../../src/cache/sources.js';
import { loadConfig } from '../../../src/config/load.js';
import type { PeerPlan } from '../../../src/peers/routing.js';
import { UpstreamClient } from '../../../src/upstream/client.js';
import { FakeUpstream, makeImageFrom, sha256 } from '../../support/fake-upstream.js';

const log = pino({ level: 'silent' });

/** A cluster that always points at one peer streaming `body`, and records what the seam told it. */
class OnePeer implements PeerSource {
  plans = 0;
  failed: string[] = [];
  announced: string[] = [];
  constructor(private readonly body: () => Readable) {}
  async plan(): Promise<PeerPlan> {
    this.plans++;
    return { kind: 'peer', source: '10.0.0.9:5002', size: undefined, body: this.body() };
  }
  reportFailed(_digest: string, source: string): void {
    this.failed.push(source);
  }
  announce(digest: string): void {
    this.announced.push(digest);
  }
}

describe('the sources seam (peer first, then the upstream)', () => {
  const cleanup: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function setup(layer: Buffer, peer: OnePeer, peerIdleMs = 300) {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    upstream.ranges = true;
    upstream.push('team/app', 'v1', makeImageFrom([layer]));
    const config = loadConfig({ env: {}, overrides: { registries: { [upstream.host]: { url: upstream.url } }, defaultRegistry: upstream.host } });
    const client = new UpstreamClient({ log });
    cleanup.push(() => client.close());
    const sources = new BlobSources({ upstream: client, log, peers: peer, peerIdleMs });
    const req = (over: Partial<SourceRequest> = {}): SourceRequest => ({
      registry: config.registries.get(upstream.host)!,
      repository: 'team/app',
      digest: sha256(layer),
      described: layer.length,
      peersAllowed: true,
      openOnly: false,
      shareable: true,
      signal: AbortSignal.timeout(30_000),
      ...over,
    });
    return { upstream, sources, req };
  }

  it('a peer that sent every byte and then broke is complete: no upstream request (a Range past the end would 416)', async () => {
    const layer = randomBytes(300_000);
    const peer = new OnePeer(() => Readable.from((async function* () {
      yield layer;
      throw new Error('reset after the last byte');
    })()));
    const { upstream, sources, req } = await setup(layer, peer);
    const opened = await sources.open(req());
    expect(sha256(await buffer(opened.body))).toBe(sha256(layer));
    expect(upstream.requests).toHaveLength(0);
    expect(peer.failed).toEqual([]);
  });

  it('a trickling peer (under 64 KiB per idle window) is left for the upstream, resumed by Range', async () => {
    const layer = randomBytes(1024 * 1024);
    const peer = new OnePeer(() => {
      const body = new PassThrough();
      let at = 0;
      const timer = setInterval(() => {
        if (body.destroyed) return clearInterval(timer);
        body.write(layer.subarray(at, at + 1024));
        at += 1024;
      }, 50);
      body.on('close', () => clearInterval(timer));
      return body;
    });
    const { upstream, sources, req } = await setup(layer, peer);
    const opened = await sources.open(req());
    expect(sha256(await buffer(opened.body))).toBe(sha256(layer));
    expect(peer.failed).toEqual(['10.0.0.9:5002']);
    const gets = upstream.requests.filter((r) => r.path.includes('/blobs/'));
    expect(gets).toHaveLength(1);
    expect(gets[0]?.headers.range).toMatch(/^bytes=[1-9]\d*-$/);
    expect(opened.fromPeer).toBeGreaterThan(0);
  });

  it('without a size from a stored manifest the cluster is not asked: nothing would bound a peer body', async () => {
    const layer = randomBytes(100_000);
    const peer = new OnePeer(() => Readable.from([randomBytes(10)]));
    const { upstream, sources, req } = await setup(layer, peer);
    const opened = await sources.open(req({ described: undefined }));
    expect(sha256(await buffer(opened.body))).toBe(sha256(layer));
    expect(peer.plans).toBe(0);
    expect(opened.source).toBe('upstream');
    expect(upstream.requests.filter((r) => r.path.includes('/blobs/'))).toHaveLength(1);
  });

  it('a peer body longer than the blob is cut and the rest comes from the upstream; wrong bytes blame the peer at settle', async () => {
    const layer = randomBytes(200_000);
    const peer = new OnePeer(() => Readable.from([Buffer.concat([layer, randomBytes(5)])]));
    const { sources, req } = await setup(layer, peer);
    const opened = await sources.open(req());
    const got = await buffer(opened.body);
    expect(got.length).toBe(layer.length);
    const { OciError } = await import('../../../src/oci/errors.js');
    opened.settle('failed', new OciError('DIGEST_INVALID', 'x', { status: 502 }));
    expect(peer.failed.length).toBeGreaterThanOrEqual(1);
  });

  it('a fill committed from a peer makes this node a holder only when it may offer it', async () => {
    const layer = randomBytes(50_000);
    const peer = new OnePeer(() => Readable.from([layer]));
    const { sources, req } = await setup(layer, peer);
    const open = await sources.open(req());
    await buffer(open.body);
    open.settle('committed');
    const tenant = await sources.open(req({ shareable: false }));
    await buffer(tenant.body);
    tenant.settle('committed');
    expect(peer.announced).toEqual([sha256(layer)]);
  });
});
