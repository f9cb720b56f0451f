import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { DigestCoordinator } from '../../src/peers/coordinator.js';
import { buildPeerListener } from '../../src/peers/listener.js';
import { coordinatorOf } from '../../src/peers/ring.js';
import { PEER_SIGNATURE_HEADER, PeerSigner } from '../../src/peers/signature.js';
import { FakeUpstream, makeImage, makeImageFrom, sha256, type FakeImage } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';
import { findFreePort } from '../support/free-port.js';
import { hashedGet, metricValue, opsUrlOf, startCluster, type ClusterNode } from '../support/peer-cluster.js';
import { startCacheProcess } from '../support/cache-process.js';
import { pullLikeContainerd } from '../support/registry-auth.js';

const MiB = 1024 * 1024;
// Generous peer timeouts where a test counts upstream requests: a loaded CI machine must not turn a slow peer
// answer into a (correct, but uncounted) fallback to the upstream.
const PATIENT = ['peerConnectTimeout: 5s', 'peerAnswerTimeout: 10s', 'peerIdleTimeout: 30s'];

/** Pulls `image` through `node` as a client does: the manifest by tag, then every blob at once; returns the digests received. */
async function pull(node: ClusterNode, upstream: FakeUpstream, repo: string, tag: string, image: FakeImage): Promise<string[]> {
  const base = `${node.url}/v2/${repo}`;
  const ns = `ns=${upstream.host}`;
  const manifest = await call(`${base}/manifests/${tag}?${ns}`);
  expect(manifest.status).toBe(200);
  const results = await Promise.all(image.blobs.map((b) => hashedGet(`${base}/blobs/${b.digest}?${ns}`).done));
  for (const r of results) expect({ status: r.status, complete: r.complete }).toEqual({ status: 200, complete: true });
  return results.map((r) => r.digest);
}

function blobGets(upstream: FakeUpstream, digest: string): number {
  return upstream.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${digest}`)).length;
}

describe('sharing blobs between nodes (registry-cache processes on loopback, static peers)', () => {
  const cleanup: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn().catch(() => undefined);
  });

  async function upstreamWith(): Promise<FakeUpstream> {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    return upstream;
  }

  it('4 nodes pulling the same cold image at once cost one upstream GET per blob; later pulls on other nodes cost none', async () => {
    const upstream = await upstreamWith();
    upstream.ranges = true;
    const image = makeImage([64 * MiB, 8 * MiB, 1 * MiB, 100 * 1024]);
    upstream.push('team/app', 'v1', image);
    // The big layer arrives over about a second, so other nodes join it while it is still filling.
    upstream.fault = (r) => (r.path.endsWith(`/blobs/${image.blobs[1]?.digest}`) ? { kind: 'slow', chunkBytes: 4 * MiB, delayMs: 50 } : undefined);
    const cluster = await startCluster(4, upstream, () => PATIENT);
    cleanup.push(() => cluster.stop());

    const pulled = await Promise.all(cluster.nodes.map((n) => pull(n, upstream, 'team/app', 'v1', image)));

    for (const digests of pulled) expect(digests).toEqual(image.blobs.map((b) => b.digest));
    for (const b of image.blobs) expect(blobGets(upstream, b.digest)).toBe(1);
    const total = image.blobs.reduce((n, b) => n + b.bytes.length, 0);
    const sum = async (name: string, labels = ''): Promise<number> => (await Promise.all(cluster.nodes.map((n) => metricValue(n, name, labels)))).reduce((a, b) => a + b, 0);
    // Every byte came into the cluster once, and reached the three other nodes from a peer. A client has its last
    // byte once the body verified, before the fill's file catches up and the fill is counted: wait for the counts.
    await expect.poll(() => sum('registry_cache_upstream_bytes_fetched_total'), { timeout: 30_000 }).toBe(total);
    await expect.poll(() => sum('registry_cache_peer_bytes_received_total'), { timeout: 30_000 }).toBe(3 * total);
    await expect.poll(() => sum('registry_cache_bytes_served_total', 'source="peer"'), { timeout: 30_000 }).toBe(3 * total);

    // Another image, pulled on one node, then on the others one after another: they read it from a holder.
    const second = makeImage([6 * MiB, 2 * MiB]);
    upstream.push('team/other', 'v1', second);
    for (const node of cluster.nodes) expect(await pull(node, upstream, 'team/other', 'v1', second)).toEqual(second.blobs.map((b) => b.digest));
    for (const b of second.blobs) expect(blobGets(upstream, b.digest)).toBe(1);

    const debug = (await (await fetch(`${await cluster.nodes[0]!.opsUrl()}/debug/peers`)).json()) as { self: string; members: { address: string; ready: boolean }[] };
    expect(debug.self).toBe(cluster.nodes[0]!.peer);
    expect(debug.members.map((m) => m.address).sort()).toEqual(cluster.nodes.slice(1).map((n) => n.peer).sort());
  }, 120_000);

  it('a source node killed mid-fill: the nodes reading from it finish from the upstream, from where they were, with correct bytes', async () => {
    const upstream = await upstreamWith();
    upstream.ranges = true;
    const image = makeImage([32 * MiB]);
    const layer = image.blobs[1]!;
    upstream.push('team/app', 'v1', image);
    let sourceAsked!: () => void;
    const sourceAskedP = new Promise<void>((resolve) => (sourceAsked = resolve));
    let slowOnce = true;
    upstream.fault = (r) => {
      if (!r.path.endsWith(`/blobs/${layer.digest}`) || !slowOnce) return undefined;
      slowOnce = false;
      sourceAsked();
      // The source's download takes ~16 s: the kill lands in the middle of it.
      return { kind: 'slow', chunkBytes: MiB, delayMs: 500 };
    };
    const cluster = await startCluster(3, upstream, () => PATIENT);
    cleanup.push(() => cluster.stop());
    const [source, ...readers] = cluster.nodes as [ClusterNode, ...ClusterNode[]];
    const ns = `ns=${upstream.host}`;
    for (const node of cluster.nodes) expect((await call(`${node.url}/v2/team/app/manifests/v1?${ns}`)).status).toBe(200);

    const first = hashedGet(`${source.url}/v2/team/app/blobs/${layer.digest}?${ns}`);
    await sourceAskedP;
    await first.firstByte;
    const gets = readers.map((n) => hashedGet(`${n.url}/v2/team/app/blobs/${layer.digest}?${ns}`));
    // Both readers have bytes that came from the source's growing file before it dies.
    await Promise.all(gets.map((g) => g.firstByte));
    source.daemon.child.kill('SIGKILL');

    for (const g of gets) expect(await g.done).toMatchObject({ status: 200, complete: true, digest: layer.digest, bytes: layer.bytes.length });
    const resumed = upstream.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${layer.digest}`)).slice(1);
    expect(resumed).toHaveLength(2);
    // They asked only for what they lacked.
    for (const r of resumed) expect(r.headers.range).toMatch(/^bytes=[1-9]\d*-$/);
    for (const n of readers) expect(await metricValue(n, 'registry_cache_peer_fallbacks_total')).toBe(1);
  }, 120_000);

  it('with a digest\'s coordinator dead, pulls go to the upstream and complete', async () => {
    const upstream = await upstreamWith();
    const image = makeImage([3 * MiB, 1 * MiB]);
    upstream.push('team/app', 'v1', image);
    // Default (short) timeouts: a dead node must cost little.
    const cluster = await startCluster(3, upstream);
    cleanup.push(() => cluster.stop());
    const peers = cluster.nodes.map((n) => n.peer);
    const dead = cluster.nodes.find((n) => n.peer === coordinatorOf(image.blobs[1]!.digest, peers))!;
    dead.daemon.child.kill('SIGKILL');
    await new Promise<void>((resolve) => (dead.daemon.exited() ? resolve() : dead.daemon.child.once('close', () => resolve())));

    for (const node of cluster.nodes.filter((n) => n !== dead)) {
      expect(await pull(node, upstream, 'team/app', 'v1', image)).toEqual(image.blobs.map((b) => b.digest));
    }
    const alive = cluster.nodes.filter((n) => n !== dead);
    const unreachable = await Promise.all(alive.map((n) => metricValue(n, 'registry_cache_peer_coordinator_answers_total', 'answer="unreachable"')));
    expect(unreachable.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
  }, 120_000);

  it('a transfer from a peer holds an image pull slot like an upstream one (maxParallelImagePulls)', async () => {
    const upstream = await upstreamWith();
    const x = makeImage([16 * MiB]);
    const y = makeImage([1 * MiB]);
    upstream.push('team/x', 'v1', x);
    upstream.push('team/y', 'v1', y);
    const xLayer = x.blobs[1]!;
    const yLayer = y.blobs[1]!;
    // X arrives at the first node over ~3 s; the second node streams it from there meanwhile.
    upstream.fault = (r) => (r.path.endsWith(`/blobs/${xLayer.digest}`) ? { kind: 'slow', chunkBytes: MiB, delayMs: 200 } : undefined);
    const cluster = await startCluster(2, upstream, (i) => [...PATIENT, ...(i === 1 ? ['serializeImagePulls: false', 'maxParallelImagePulls: 1', 'pullLinger: 0s'] : [])]);
    cleanup.push(() => cluster.stop());
    const [a, b] = cluster.nodes as [ClusterNode, ClusterNode];
    const ns = `ns=${upstream.host}`;
    expect((await call(`${a.url}/v2/team/x/manifests/v1?${ns}`)).status).toBe(200);
    for (const repo of ['team/x', 'team/y']) expect((await call(`${b.url}/v2/${repo}/manifests/v1?${ns}`)).status).toBe(200);

    const atA = hashedGet(`${a.url}/v2/team/x/blobs/${xLayer.digest}?${ns}`);
    await atA.firstByte;
    const atB = hashedGet(`${b.url}/v2/team/x/blobs/${xLayer.digest}?${ns}`);
    await atB.firstByte;
    // B's one slot is X's (from the peer): Y waits for it.
    const yAtB = hashedGet(`${b.url}/v2/team/y/blobs/${yLayer.digest}?${ns}`);

    expect(await atB.done).toMatchObject({ complete: true, digest: xLayer.digest });
    expect(await yAtB.done).toMatchObject({ complete: true, digest: yLayer.digest });
    await atA.done;
    expect(blobGets(upstream, xLayer.digest)).toBe(1);
    expect(await metricValue(b, 'registry_cache_peer_bytes_received_total')).toBe(xLayer.bytes.length);
    const xAtA = upstream.requests.find((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${xLayer.digest}`))!;
    const yGet = upstream.requests.find((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${yLayer.digest}`))!;
    // B's copy of X cannot end before A's upstream body did: Y went upstream only after that.
    expect(yGet.startedAt).toBeGreaterThan(xAtA.endedAt ?? Number.POSITIVE_INFINITY);
  }, 120_000);

  describe('a lying or stalling peer', () => {
    /**
     * One real node and an in-process peer that coordinates `digest` (the ring is searched for a layer it owns) and
     * claims to hold it, serving `body` for it.
     */
    async function withFakePeer(
      serve: (layer: Buffer) => Readable,
      extra: string[],
      holder?: string,
    ): Promise<{ node: ClusterNode; upstream: FakeUpstream; layer: Buffer; digest: string; served: () => number }> {
      const upstream = await upstreamWith();
      upstream.ranges = true;
      const fakePort = await findFreePort();
      const fake = `127.0.0.1:${fakePort}`;
      const nodePort = await findFreePort();
      const nodePeer = `127.0.0.1:${nodePort}`;
      let layer = randomBytes(4 * MiB);
      while (coordinatorOf(sha256(layer), [fake, nodePeer]) !== fake) layer = randomBytes(4 * MiB);
      const digest = sha256(layer);
      upstream.push('team/app', 'v1', makeImageFrom([layer]));
      const secret = randomBytes(32).toString('hex');
      const coordinator = new DigestCoordinator();
      coordinator.addHolder(digest, holder ?? fake);
      let served = 0;
      const app = buildPeerListener({
        signer: new PeerSigner(secret),
        coordinator,
        blobs: {
          find: (d) => {
            if (d !== digest) return undefined;
            served++;
            return { size: layer.length, open: () => serve(layer) };
          },
        },
        isLive: () => true,
        log: pino({ level: 'silent' }),
      });
      await app.listen({ host: '127.0.0.1', port: fakePort });
      cleanup.push(() => app.close());
      const dir = await mkdtemp(join(tmpdir(), 'rc-fakepeer-'));
      cleanup.push(() => rm(dir, { recursive: true, force: true }));
      await writeFile(join(dir, 'secret'), secret);
      const proc = await startCacheProcess({ [upstream.host]: upstream.url }, [
        `peers: ["${fake}", "${nodePeer}"]`,
        `peerListen: "${nodePeer}"`,
        `peerSecret: "${join(dir, 'secret')}"`,
        'metricsListen: 127.0.0.1:0',
        ...extra,
      ]);
      const node: ClusterNode = {
        ...proc,
        peer: nodePeer,
        opsUrl: () => opsUrlOf(proc),
      };
      cleanup.push(() => proc.stop());
      return { node, upstream, layer, digest, served: () => served };
    }

    it('wrong bytes from a peer: nothing wrong is delivered complete or stored, and the retry comes from the upstream', async () => {
      const { node, upstream, layer, digest } = await withFakePeer((l) => {
        const bad = Buffer.from(l);
        bad[1000] = (bad[1000] ?? 0) ^ 0xff;
        return Readable.from([bad]);
      }, PATIENT);
      const url = `${node.url}/v2/team/app/blobs/${digest}?ns=${upstream.host}`;
      expect((await call(`${node.url}/v2/team/app/manifests/v1?ns=${upstream.host}`)).status).toBe(200);

      const poisoned = await hashedGet(url).done;
      // Cut before its last byte: the client never holds the whole wrong body.
      expect(poisoned.complete).toBe(false);
      expect(poisoned.bytes).toBeLessThan(layer.length);
      expect(blobGets(upstream, digest)).toBe(0);
      // Counted when the failed fill settles, which may come just after the client saw its body cut.
      await expect.poll(() => metricValue(node, 'registry_cache_peer_fetches_total', 'outcome="mismatch"'), { timeout: 30_000 }).toBe(1);

      const retry = await hashedGet(url).done;
      expect(retry).toMatchObject({ status: 200, complete: true, digest, bytes: layer.length });
      expect(blobGets(upstream, digest)).toBe(1);
      // And the stored copy is the right one.
      expect(await hashedGet(url).done).toMatchObject({ complete: true, digest });
      expect(blobGets(upstream, digest)).toBe(1);
    }, 60_000);

    it('a coordinator that names a node outside the membership is not followed: the pull goes upstream', async () => {
      const outsider = `127.0.0.1:${await findFreePort()}`;
      const { node, upstream, layer, digest, served } = await withFakePeer((l) => Readable.from([l]), PATIENT, outsider);
      expect((await call(`${node.url}/v2/team/app/manifests/v1?ns=${upstream.host}`)).status).toBe(200);
      const got = await hashedGet(`${node.url}/v2/team/app/blobs/${digest}?ns=${upstream.host}`).done;
      expect(got).toMatchObject({ status: 200, complete: true, digest, bytes: layer.length });
      expect(blobGets(upstream, digest)).toBe(1);
      expect(served()).toBe(0);
      expect(await metricValue(node, 'registry_cache_peer_coordinator_answers_total', 'answer="unreachable"')).toBe(1);
    }, 60_000);

    it('a peer that stalls: after peerIdleTimeout the same request finishes from the upstream, resumed by Range', async () => {
      const { node, upstream, layer, digest } = await withFakePeer((l) => {
        // 512 KiB, then silence (the stream never ends).
        const body = new Readable({ read() {} });
        body.push(l.subarray(0, 512 * 1024));
        return body;
      }, ['peerConnectTimeout: 5s', 'peerAnswerTimeout: 10s', 'peerIdleTimeout: 1s']);
      expect((await call(`${node.url}/v2/team/app/manifests/v1?ns=${upstream.host}`)).status).toBe(200);

      const got = await hashedGet(`${node.url}/v2/team/app/blobs/${digest}?ns=${upstream.host}`).done;

      expect(got).toMatchObject({ status: 200, complete: true, digest, bytes: layer.length });
      const gets = upstream.requests.filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${digest}`));
      expect(gets.map((r) => r.headers.range)).toEqual([`bytes=${512 * 1024}-`]);
      expect(await metricValue(node, 'registry_cache_peer_fetches_total', 'outcome="failed"')).toBe(1);
    }, 60_000);
  });

  it('the peer listener: 401 without a valid signature; never manifests; private layers only by opt-in, and never to a lure', async () => {
    const upstream = await upstreamWith();
    const open = makeImage([256 * 1024]);
    const secret = makeImage([128 * 1024]);
    upstream.push('public/app', 'v1', open);
    upstream.push('private/app', 'v1', secret);
    upstream.auth = { kind: 'basic', users: { alice: 'wonderland' }, publicRepos: ['public/app', 'public/lure'] };
    // A opts in to sharing private layers: with other nodes, never with a client that is only listed the blob.
    const cluster = await startCluster(2, upstream, (i) => [...PATIENT, ...(i === 0 ? ['peerSharePrivateLayers: true'] : [])]);
    cleanup.push(() => cluster.stop());
    const [a, b] = cluster.nodes as [ClusterNode, ClusterNode];
    const ns = `ns=${upstream.host}`;
    // Node A: the public image anonymously, the private one with alice's credential (through the cache's realm).
    expect(await pull(a, upstream, 'public/app', 'v1', open)).toEqual(open.blobs.map((x) => x.digest));
    const alice = { username: 'alice', password: 'wonderland' };
    expect((await pullLikeContainerd(`${a.url}/v2/private/app/manifests/v1?${ns}`, upstream.host, 'private/app', alice)).final.status).toBe(200);
    for (const x of secret.blobs) expect((await pullLikeContainerd(`${a.url}/v2/private/app/blobs/${x.digest}?${ns}`, upstream.host, 'private/app', alice)).final.status).toBe(200);

    const peerGet = (digest: string, sign: boolean | string = true, query = ''): Promise<Response> => {
      const path = `/peer/v1/blobs/${digest}${query}`;
      const headers: Record<string, string> = {};
      if (sign) headers[PEER_SIGNATURE_HEADER] = typeof sign === 'string' ? sign : new PeerSigner(cluster.secret).sign({ method: 'GET', path, range: undefined });
      return fetch(`http://${a.peer}${path}`, { headers });
    };
    const layer = open.blobs[1]!.digest;
    expect((await peerGet(layer, false)).status).toBe(401);
    expect((await peerGet(layer, new PeerSigner(randomBytes(32).toString('hex')).sign({ method: 'GET', path: `/peer/v1/blobs/${layer}`, range: undefined }))).status).toBe(401);
    const replay = new PeerSigner(cluster.secret).sign({ method: 'GET', path: `/peer/v1/blobs/${layer}`, range: undefined });
    const served = await peerGet(layer, replay);
    expect(served.status).toBe(200);
    expect(sha256(Buffer.from(await served.arrayBuffer()))).toBe(layer);
    expect((await peerGet(layer, replay)).status).toBe(401);
    // Manifests are never offered; tenant-credential layers only by the opt-in, and never to a request for open content
    // only (a reader whose client is merely listed the blob). Nothing here reaches the upstream.
    const before = upstream.requests.length;
    expect((await peerGet(open.manifestDigest)).status).toBe(404);
    for (const x of secret.blobs) expect((await peerGet(x.digest)).status).toBe(200);
    for (const x of secret.blobs) expect((await peerGet(x.digest, true, '?open=1')).status).toBe(404);
    expect((await peerGet(layer, true, '?open=1')).status).toBe(200);
    expect((await fetch(`http://${a.peer}/v2/public/app/manifests/v1`)).status).toBe(401);
    expect(upstream.requests.length).toBe(before);

    // Node B: a client without alice's credential gets no private layer although A holds them all.
    for (const x of secret.blobs) {
      const res = await pullLikeContainerd(`${b.url}/v2/private/app/blobs/${x.digest}?${ns}`, upstream.host, 'private/app');
      expect(res.final.status).toBe(401);
    }
    // Nor through a public manifest of its own that lists the private layers' digests (registries may accept one).
    const lure = Buffer.from(secret.manifest.toString().replace('"schemaVersion":2', '"schemaVersion":2,"annotations":{"lure":"1"}'));
    upstream.pushManifest('public/lure', 'v1', lure, 'application/vnd.oci.image.manifest.v1+json');
    expect((await call(`${b.url}/v2/public/lure/manifests/v1?${ns}`)).status).toBe(200);
    for (const x of secret.blobs) {
      const res = await pullLikeContainerd(`${b.url}/v2/public/lure/blobs/${x.digest}?${ns}`, upstream.host, 'public/lure');
      expect(res.final.status).toBe(404);
    }
    expect(await metricValue(b, 'registry_cache_peer_bytes_received_total')).toBe(0);
  }, 120_000);
});
