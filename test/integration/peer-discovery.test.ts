import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { ConfigError, type PeerSettings } from '../../src/config/load.js';
import { Metrics } from '../../src/metrics.js';
import { startPeerSharing, type PeerSharing } from '../../src/peer-sharing.js';
import { endpointSlice, startFakeKubernetes, type FakeKubernetes } from '../support/fake-kubernetes.js';

const NS = 'registry-cache';
const SERVICE = 'registry-cache-peers';
const PORT = { name: 'peer', port: 5002 };
const log = pino({ level: 'silent' });

const settings: PeerSettings = {
  listen: { host: '0.0.0.0', port: 5002 },
  members: [],
  discovery: 'kubernetes',
  service: SERVICE,
  portName: 'peer',
  secret: randomBytes(32),
  connectTimeoutMs: 200,
  answerTimeoutMs: 500,
  idleTimeoutMs: 5_000,
  sharePrivateLayers: false,
};

describe('peer discovery as the server starts it (peerDiscovery: kubernetes)', () => {
  let api: FakeKubernetes | undefined;
  let sharing: PeerSharing | undefined;
  afterEach(async () => {
    await sharing?.close();
    await api?.close();
    sharing = undefined;
    api = undefined;
  });

  it('knows itself by POD_IP, lists the other ready endpoints of the Service, and follows the watch', async () => {
    api = await startFakeKubernetes(NS, [endpointSlice('s1', SERVICE, PORT, [{ ip: '10.0.0.1', nodeName: 'n1' }, { ip: '10.0.0.3', nodeName: 'self' }])]);
    const metrics = new Metrics({ activeFills: () => 0, queuedPulls: () => 0, storeBytes: () => 0 });
    sharing = await startPeerSharing(settings, { log, metrics, env: { POD_IP: '10.0.0.3', POD_NAMESPACE: NS }, kubeConfig: api.kubeConfig });
    expect(sharing.self).toBe('10.0.0.3:5002');
    expect(sharing.describe()).toMatchObject({ self: '10.0.0.3:5002', members: [{ address: '10.0.0.1:5002', ready: true, nodeName: 'n1' }] });
    await api.watching();
    api.emit('MODIFIED', endpointSlice('s1', SERVICE, PORT, [{ ip: '10.0.0.1', ready: false }, { ip: '10.0.0.2' }, { ip: '10.0.0.3' }]));
    await expect.poll(() => (sharing?.describe() as { members: unknown[] }).members).toEqual([
      { address: '10.0.0.1:5002', ready: false, skippedForMs: 0 },
      { address: '10.0.0.2:5002', ready: true, skippedForMs: 0 },
    ]);
    const text = (await metrics.render()).body;
    expect(text).toContain('registry_cache_peer_members{state="ready"} 1');
    expect(text).toContain('registry_cache_peer_members{state="not_ready"} 1');
  });

  it('refuses to start without POD_IP, naming the key', async () => {
    const metrics = new Metrics({ activeFills: () => 0, queuedPulls: () => 0, storeBytes: () => 0 });
    const started = startPeerSharing(settings, { log, metrics, env: { POD_NAMESPACE: NS } });
    await expect(started).rejects.toBeInstanceOf(ConfigError);
    await expect(started).rejects.toMatchObject({ key: 'peerDiscovery', message: expect.stringContaining('POD_IP') });
  });
});
