import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { PassThrough, Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { afterEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import type { FastifyInstance } from 'fastify';
import { sha256 } from '../support/fake-upstream.js';
import { PeerClient } from '../../src/peers/client.js';
import { DigestCoordinator } from '../../src/peers/coordinator.js';
import { buildPeerListener, type SharedBlob } from '../../src/peers/listener.js';
import type { Membership, PeerMember } from '../../src/peers/membership.js';
import { PeerRouting, type PeerEvent, type PeerPlan } from '../../src/peers/routing.js';
import { coordinatorOf } from '../../src/peers/ring.js';
import { PeerSigner } from '../../src/peers/signature.js';

const SECRET = 'peer secret for the routing tests';
const log = pino({ level: 'silent' });

/** A membership whose list the test sets. */
class ListMembership implements Membership {
  list: PeerMember[] = [];
  members(): readonly PeerMember[] {
    return this.list;
  }
  onChange(): () => void {
    return () => undefined;
  }
  async close(): Promise<void> {}
}

interface Node {
  address: string;
  shared: Map<string, SharedBlob>;
  routing: PeerRouting;
  membership: ListMembership;
  events: PeerEvent[];
  app: FastifyInstance;
}

describe('peer routing between nodes', () => {
  const closers: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const c of closers.splice(0).reverse()) await c().catch(() => undefined);
  });

  async function cluster(n: number): Promise<Node[]> {
    const nodes: Node[] = [];
    for (let i = 0; i < n; i++) {
      const shared = new Map<string, SharedBlob>();
      const coordinator = new DigestCoordinator();
      const holder: { routing?: PeerRouting } = {};
      const app = buildPeerListener({ signer: new PeerSigner(SECRET), coordinator, blobs: { find: (d) => shared.get(d) }, isLive: (m) => holder.routing?.isLive(m) ?? false, log });
      await app.listen({ host: '127.0.0.1', port: 0 });
      closers.push(() => app.close());
      const address = `127.0.0.1:${(app.server.address() as AddressInfo).port}`;
      const membership = new ListMembership();
      // Generous timeouts: these tests are about routing, and a loaded CI machine must not turn them into fallbacks.
      const client = new PeerClient({ signer: new PeerSigner(SECRET), self: address, timeouts: { connectMs: 10_000, answerMs: 10_000, idleMs: 10_000 } });
      closers.push(() => client.close());
      const events: PeerEvent[] = [];
      holder.routing = new PeerRouting({ self: address, membership, coordinator, client, log, onEvent: (e) => events.push(e) });
      nodes.push({ address, shared, routing: holder.routing, membership, events, app });
    }
    for (const node of nodes) node.membership.list = nodes.filter((o) => o !== node).map((o) => ({ address: o.address, ready: true }));
    return nodes;
  }

  it('one node gets the lease, every other streams from it while it fills, later nodes from a holder', async () => {
    const nodes = await cluster(4);
    const data = randomBytes(2 * 1024 * 1024);
    const d = sha256(data);
    const [first, ...others] = nodes as [Node, ...Node[]];
    const plan = await first.routing.plan(d);
    expect(plan.kind).toBe('lease');
    const growing = new PassThrough();
    first.shared.set(d, { size: undefined, open: () => growing });
    const plans = await Promise.all(others.slice(0, 2).map((n) => n.routing.plan(d)));
    for (const p of plans) expect(p).toMatchObject({ kind: 'peer', source: first.address });
    const bodies = plans.map((p) => buffer((p as Extract<PeerPlan, { kind: 'peer' }>).body));
    for (let i = 0; i < data.length; i += 256 * 1024) growing.write(data.subarray(i, i + 256 * 1024));
    growing.end();
    for (const b of await Promise.all(bodies)) expect(sha256(b)).toBe(d);
    first.shared.set(d, { size: data.length, open: (s, e) => Readable.from([data.subarray(s, e === undefined ? undefined : e + 1)]) });
    (plan as Extract<PeerPlan, { kind: 'lease' }>).lease.end('committed');
    const last = nodes[3] as Node;
    const later = await last.routing.plan(d, 1024);
    expect(later).toMatchObject({ kind: 'peer', source: first.address, size: data.length });
    expect((await buffer((later as Extract<PeerPlan, { kind: 'peer' }>).body)).equals(data.subarray(1024))).toBe(true);
  });

  it('a failed fill frees the digest: the next node gets the lease', async () => {
    const [a, b] = await cluster(2) as [Node, Node];
    const d = sha256(Buffer.from('failing'));
    const plan = await a.routing.plan(d);
    expect(plan.kind).toBe('lease');
    (plan as Extract<PeerPlan, { kind: 'lease' }>).lease.end('failed');
    expect((await b.routing.plan(d)).kind).toBe('lease');
  });

  it('goes upstream alone when the coordinator is down, and skips a source that failed it', async () => {
    const nodes = await cluster(3);
    const [x, y, z] = nodes as [Node, Node, Node];
    const ring = nodes.map((n) => n.address);
    const coordinatedByZ = Array.from({ length: 200 }, (_, i) => sha256(Buffer.from(`digest ${i}`))).filter((d) => coordinatorOf(d, ring) === z.address);
    expect(coordinatedByZ.length).toBeGreaterThan(2);
    await z.app.close();
    const first = await y.routing.plan(coordinatedByZ[0] as string);
    expect(first.kind).toBe('alone');
    expect(y.events).toContain('coordinator-unreachable');
    expect(y.routing.describe().members.find((m) => m.address === z.address)?.skippedForMs).toBeGreaterThan(0);
    // Once z is skipped, its digests are coordinated by the nodes that are left.
    const second = await y.routing.plan(coordinatedByZ[1] as string);
    expect(second, JSON.stringify(second)).toMatchObject({ kind: 'lease' });
    if (second.kind === 'lease') second.lease.end('failed');

    // A holder that serves a blob it then fails on is reported and avoided: the next plan is a lease.
    // (x has not noticed z is gone: use a blob that z does not coordinate.)
    const data = Array.from({ length: 50 }, (_, i) => Buffer.from(`holder content ${i}`)).find((b) => coordinatorOf(sha256(b), ring) !== z.address) as Buffer;
    const hd = sha256(data);
    const p1 = await x.routing.plan(hd);
    expect(p1.kind).toBe('lease');
    x.shared.set(hd, { size: data.length, open: () => Readable.from([data]) });
    (p1 as Extract<PeerPlan, { kind: 'lease' }>).lease.end('committed');
    const p2 = await y.routing.plan(hd);
    expect(p2).toMatchObject({ kind: 'peer', source: x.address });
    await buffer((p2 as Extract<PeerPlan, { kind: 'peer' }>).body);
    y.routing.reportFailed(hd, x.address, new Error('digest mismatch'));
    const p3 = await y.routing.plan(hd);
    expect(p3.kind).toBe('lease');
  });
});
