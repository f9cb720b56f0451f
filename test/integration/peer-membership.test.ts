import { afterEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { StaticMembership, readyAddresses, type Membership } from '../../src/peers/membership.js';
import { KubernetesMembership, membersFromSlices } from '../../src/peers/kubernetes.js';
import { coordinatorOf } from '../../src/peers/ring.js';
import { endpointSlice, startFakeKubernetes, type FakeKubernetes } from '../support/fake-kubernetes.js';

const NS = 'registry-cache';
const SERVICE = 'registry-cache-peers';
const PORT = { name: 'peer', port: 5002 };
const log = pino({ level: 'silent' });
const digests = Array.from({ length: 200 }, (_, i) => `sha256:${i.toString(16).padStart(64, '0')}`);

function nextChange(membership: Membership): Promise<void> {
  return new Promise((resolve) => {
    const off = membership.onChange(() => {
      off();
      resolve();
    });
  });
}

describe('peer membership', () => {
  let api: FakeKubernetes | undefined;
  let membership: Membership | undefined;
  afterEach(async () => {
    await membership?.close();
    await api?.close();
    membership = undefined;
    api = undefined;
  });

  it('a static list leaves this node out and counts every member once', () => {
    const m = new StaticMembership(['127.0.0.1:15120', '127.0.0.1:15121', '127.0.0.1:15121', '127.0.0.1:15122'], '127.0.0.1:15121');
    expect(readyAddresses(m)).toEqual(['127.0.0.1:15120', '127.0.0.1:15122']);
  });

  it('follows EndpointSlices through the official client: added, not ready, removed, and the ring with them', async () => {
    api = await startFakeKubernetes(NS, [
      endpointSlice('peers-a', SERVICE, PORT, [{ ip: '10.0.0.1', nodeName: 'n1' }, { ip: '10.0.0.2', nodeName: 'n2' }, { ip: '10.0.0.3', nodeName: 'self' }]),
    ]);
    membership = await KubernetesMembership.start({ service: SERVICE, namespace: NS, portName: 'peer', selfIp: '10.0.0.3', kubeConfig: api.kubeConfig, log });
    expect(membership.members()).toEqual([
      { address: '10.0.0.1:5002', ready: true, nodeName: 'n1' },
      { address: '10.0.0.2:5002', ready: true, nodeName: 'n2' },
    ]);
    await api.watching();
    // One list, then a watch: never a request per lookup.
    const listed = api.requests.filter((r) => !r.url.includes('watch='));
    expect(listed).toHaveLength(1);
    expect(decodeURIComponent(listed[0]?.url ?? '')).toContain(`labelSelector=kubernetes.io/service-name=${SERVICE}`);

    let changed = nextChange(membership);
    api.emit('MODIFIED', endpointSlice('peers-a', SERVICE, PORT, [{ ip: '10.0.0.1', nodeName: 'n1' }, { ip: '10.0.0.2', ready: false, nodeName: 'n2' }, { ip: '10.0.0.3' }]));
    await changed;
    expect(membership.members().find((m) => m.address === '10.0.0.2:5002')?.ready).toBe(false);
    expect(readyAddresses(membership)).toEqual(['10.0.0.1:5002']);
    for (const d of digests) expect(coordinatorOf(d, readyAddresses(membership))).toBe('10.0.0.1:5002');

    changed = nextChange(membership);
    api.emit('ADDED', endpointSlice('peers-b', SERVICE, PORT, [{ ip: '10.0.0.4', nodeName: 'n4' }]));
    await changed;
    expect(readyAddresses(membership)).toEqual(['10.0.0.1:5002', '10.0.0.4:5002']);
    const owners = new Set(digests.map((d) => coordinatorOf(d, readyAddresses(membership as Membership))));
    expect(owners).toEqual(new Set(['10.0.0.1:5002', '10.0.0.4:5002']));

    changed = nextChange(membership);
    api.emit('DELETED', endpointSlice('peers-b', SERVICE, PORT, []));
    await changed;
    expect(membership.members().map((m) => m.address)).toEqual(['10.0.0.1:5002', '10.0.0.2:5002']);
    expect(api.requests.filter((r) => !r.url.includes('watch='))).toHaveLength(1);
  });

  it('reads the peer port by name, treats a missing ready condition as ready and a terminating endpoint as not', () => {
    const slice = endpointSlice('s', SERVICE, PORT, [{ ip: '10.0.0.9' }]);
    slice.ports = [{ name: 'registry', port: 5000 }, { name: 'peer', port: 5002 }];
    slice.endpoints = [
      { addresses: ['10.0.0.9'] },
      { addresses: ['10.0.0.8'], conditions: { ready: true, terminating: true } },
      { addresses: ['fd00::1'], conditions: { ready: true } },
    ];
    expect(membersFromSlices([slice], 'peer', undefined)).toEqual([
      { address: '10.0.0.8:5002', ready: false },
      { address: '10.0.0.9:5002', ready: true },
      { address: '[fd00::1]:5002', ready: true },
    ]);
  });
});
