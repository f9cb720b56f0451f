import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import { PassThrough, Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { afterEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { request } from 'undici';
import type { FastifyInstance } from 'fastify';
import { sha256 } from '../support/fake-upstream.js';
import { PeerClient, PeerError } from '../../src/peers/client.js';
import { DigestCoordinator } from '../../src/peers/coordinator.js';
import { buildPeerListener, type SharedBlob } from '../../src/peers/listener.js';
import { PEER_SIGNATURE_HEADER, PeerSigner } from '../../src/peers/signature.js';

const SECRET = 'peer secret for the transfer tests';
const log = pino({ level: 'silent' });

describe('peer listener and client', () => {
  const closers: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const c of closers.splice(0).reverse()) await c();
  });

  async function startNode(blobs: Map<string, SharedBlob>, coordinator = new DigestCoordinator()): Promise<{ address: string; app: FastifyInstance; refused: string[] }> {
    const refused: string[] = [];
    const app = buildPeerListener({ signer: new PeerSigner(SECRET), coordinator, blobs: { find: (d) => blobs.get(d) }, isLive: () => true, log, onRefused: (r) => refused.push(r) });
    await app.listen({ host: '127.0.0.1', port: 0 });
    closers.push(() => app.close());
    return { address: `127.0.0.1:${(app.server.address() as AddressInfo).port}`, app, refused };
  }

  function client(self: string, timeouts?: { connectMs: number; answerMs: number; idleMs: number }): PeerClient {
    const c = new PeerClient({ signer: new PeerSigner(SECRET), self, ...(timeouts ? { timeouts } : {}) });
    closers.push(() => c.close());
    return c;
  }

  it('streams a complete blob whole and from an offset, and a filling blob as it grows', async () => {
    const data = randomBytes(1024 * 1024 + 7);
    const growing = new PassThrough();
    const growingData = randomBytes(300_000);
    const blobs = new Map<string, SharedBlob>([
      [sha256(data), { size: data.length, open: (start, end) => Readable.from([data.subarray(start, end === undefined ? undefined : end + 1)]) }],
      [sha256(growingData), { size: undefined, open: () => growing }],
    ]);
    const node = await startNode(blobs);
    const c = client('127.0.0.1:1');
    const whole = await c.fetchBlob(node.address, sha256(data));
    expect(whole.status).toBe(200);
    expect(whole.size).toBe(data.length);
    expect(sha256(await buffer(whole.body))).toBe(sha256(data));
    const tail = await c.fetchBlob(node.address, sha256(data), 1000);
    expect(tail.status).toBe(206);
    expect(tail.size).toBe(data.length);
    expect((await buffer(tail.body)).equals(data.subarray(1000))).toBe(true);

    const filling = await c.fetchBlob(node.address, sha256(growingData));
    expect(filling.size).toBeUndefined();
    const received = buffer(filling.body);
    for (let i = 0; i < growingData.length; i += 65_536) growing.write(growingData.subarray(i, i + 65_536));
    growing.end();
    expect(sha256(await received)).toBe(sha256(growingData));
  });

  it('coordinates through the listener: a lease for the first claimant, the filler for the next, a holder after commit', async () => {
    const coordinatorNode = await startNode(new Map());
    const a = client('127.0.0.1:1001');
    const b = client('127.0.0.1:1002');
    const d = sha256(Buffer.from('x'));
    expect(await a.claim(coordinatorNode.address, d)).toEqual({ kind: 'lease', ttlMs: 15_000 });
    expect(await b.claim(coordinatorNode.address, d)).toEqual({ kind: 'peer', source: '127.0.0.1:1001' });
    expect(await a.renew(coordinatorNode.address, d)).toBe(true);
    expect(await b.renew(coordinatorNode.address, d)).toBe(false);
    await a.release(coordinatorNode.address, d, 'committed');
    expect(await b.claim(coordinatorNode.address, d)).toEqual({ kind: 'peer', source: '127.0.0.1:1001' });
    expect(await b.claim(coordinatorNode.address, d, ['127.0.0.1:1001'])).toEqual({ kind: 'lease', ttlMs: 15_000 });
  });

  it('answers unsigned, wrongly signed, stale and replayed requests with 401 and nothing else', async () => {
    const data = Buffer.from('secret layer');
    const node = await startNode(new Map([[sha256(data), { size: data.length, open: () => Readable.from([data]) }]]));
    const path = `/peer/v1/blobs/${sha256(data)}`;
    const url = `http://${node.address}${path}`;
    const unsigned = await request(url);
    expect(unsigned.statusCode).toBe(401);
    expect(await unsigned.body.text()).not.toContain('secret layer');
    const wrongKey = await request(url, { headers: { [PEER_SIGNATURE_HEADER]: new PeerSigner('another secret, also long').sign({ method: 'GET', path }) } });
    expect(wrongKey.statusCode).toBe(401);
    await wrongKey.body.dump();
    const stale = new PeerSigner(SECRET, { now: () => Date.now() - 31_000 }).sign({ method: 'GET', path });
    const staleRes = await request(url, { headers: { [PEER_SIGNATURE_HEADER]: stale } });
    expect(staleRes.statusCode).toBe(401);
    await staleRes.body.dump();
    const header = new PeerSigner(SECRET).sign({ method: 'GET', path });
    const first = await request(url, { headers: { [PEER_SIGNATURE_HEADER]: header } });
    expect(first.statusCode).toBe(200);
    expect(await first.body.text()).toBe('secret layer');
    const replay = await request(url, { headers: { [PEER_SIGNATURE_HEADER]: header } });
    expect(replay.statusCode).toBe(401);
    await replay.body.dump();
    // A signature for one blob does not open another path.
    const other = await request(`http://${node.address}/peer/v1/blobs/${sha256(Buffer.from('y'))}`, { headers: { [PEER_SIGNATURE_HEADER]: new PeerSigner(SECRET).sign({ method: 'GET', path }) } });
    expect(other.statusCode).toBe(401);
    await other.body.dump();
    expect(node.refused).toEqual(['missing', 'bad-signature', 'expired', 'replayed', 'bad-signature']);
  });

  it('serves no manifests, tags or unknown digests, even to signed requests', async () => {
    const node = await startNode(new Map());
    const signer = new PeerSigner(SECRET);
    for (const path of ['/v2/library/alpine/manifests/latest', '/peer/v1/manifests/latest', `/peer/v1/blobs/${sha256(Buffer.from('nope'))}`, '/peer/v1/blobs/sha256:..%2F..%2Fetc']) {
      const res = await request(`http://${node.address}${path}`, { headers: { [PEER_SIGNATURE_HEADER]: signer.sign({ method: 'GET', path }) } });
      expect(res.statusCode, path).toBe(404);
      await res.body.dump();
    }
    await expect(client('127.0.0.1:1').fetchBlob(node.address, sha256(Buffer.from('nope')))).rejects.toMatchObject({ reason: 'not-found' });
  });

  it('gives up quickly on a dead or hung peer', async () => {
    const hung: Server = createServer(() => undefined);
    await new Promise<void>((resolve) => hung.listen(0, '127.0.0.1', resolve));
    closers.push(() => new Promise((resolve) => { hung.close(resolve); for (const s of openSockets) s.destroy(); }));
    const openSockets: import('node:net').Socket[] = [];
    hung.on('connection', (s) => openSockets.push(s));
    const c = client('127.0.0.1:1', { connectMs: 200, answerMs: 300, idleMs: 1000 });
    const d = sha256(Buffer.from('z'));
    const hungErr = await c.claim(`127.0.0.1:${(hung.address() as AddressInfo).port}`, d).catch((e: unknown) => e);
    expect(hungErr).toBeInstanceOf(PeerError);
    expect((hungErr as PeerError).reason).toBe('timeout');
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const deadPort = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    const deadErr = await c.claim(`127.0.0.1:${deadPort}`, d).catch((e: unknown) => e);
    expect((deadErr as PeerError).reason).toBe('unreachable');
  });
});
