import { Transform, pipeline, type Readable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { ConfigError, type PeerSettings } from './config/load.js';
import type { Metrics } from './metrics.js';
import { PeerClient } from './peers/client.js';
import { DigestCoordinator } from './peers/coordinator.js';
import { buildPeerListener, type SharedBlobs } from './peers/listener.js';
import { StaticMembership, type Membership } from './peers/membership.js';
import { PeerRouting, type PeerEvent } from './peers/routing.js';
import { PeerSigner } from './peers/signature.js';

/** Sharing between nodes, as the running cache uses it. */
export interface PeerSharing {
  /** This node's identity on the ring (`host:port` of its peer listener as the others reach it). */
  self: string;
  routing: PeerRouting;
  /** Builds the peer listener over what this node may share; listening is the caller's. */
  listener(blobs: SharedBlobs): FastifyInstance;
  /** Members, their state, skipped peers, recent failures and coordinator counts, for `/debug/peers`. */
  describe(): unknown;
  /** Stops membership, timers and pooled connections (the listener is closed by whoever listens). */
  close(): Promise<void>;
}

/** What a coordinator event counts as in the metrics. */
const ANSWERS: Partial<Record<PeerEvent, string>> = { 'coordinator-peer': 'peer', 'coordinator-lease': 'lease', 'coordinator-unreachable': 'unreachable' };

/**
 * Starts membership (the static `peers` list, or an EndpointSlice informer) and the routing that asks a digest's
 * coordinator before a blob goes upstream. In Kubernetes a node knows itself by `POD_IP` (downward API).
 */
export async function startPeerSharing(
  settings: PeerSettings,
  deps: { log: Logger; metrics: Metrics; env?: NodeJS.ProcessEnv; /** In-cluster configuration when absent. */ kubeConfig?: KubeConfig },
): Promise<PeerSharing> {
  const env = deps.env ?? process.env;
  const log = deps.log.child({ component: 'peers' });
  const signer = new PeerSigner(settings.secret);
  let self: string;
  let membership: Membership;
  if (settings.discovery === 'kubernetes') {
    const podIp = env.POD_IP;
    if (!podIp) throw new ConfigError('peerDiscovery', 'kubernetes discovery needs POD_IP (downward API status.podIP) to know which endpoint is this node');
    // The Kubernetes client is loaded only here: importing it costs every start-up a second or more.
    const { KubernetesMembership, podNamespace } = await import('./peers/kubernetes.js');
    const namespace = await podNamespace(env);
    if (!namespace) throw new ConfigError('peerDiscovery', 'kubernetes discovery needs POD_NAMESPACE or the service account namespace file');
    self = podIp.includes(':') ? `[${podIp}]:${settings.listen.port}` : `${podIp}:${settings.listen.port}`;
    membership = await KubernetesMembership.start({
      service: settings.service as string,
      namespace,
      portName: settings.portName,
      selfIp: podIp,
      log,
      ...(deps.kubeConfig ? { kubeConfig: deps.kubeConfig } : {}),
    });
  } else {
    const { host, port } = settings.listen;
    self = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
    membership = new StaticMembership(settings.members, self);
  }
  const coordinator = new DigestCoordinator();
  const sweeper = setInterval(() => coordinator.sweep(), 5_000);
  sweeper.unref();
  const client = new PeerClient({
    signer,
    self,
    timeouts: { connectMs: settings.connectTimeoutMs, answerMs: settings.answerTimeoutMs, idleMs: settings.idleTimeoutMs },
  });
  const routing = new PeerRouting({
    self,
    membership,
    coordinator,
    client,
    log,
    onEvent: (event) => {
      const answer = ANSWERS[event];
      if (answer) deps.metrics.peerCoordinatorAnswers.labels(answer).inc();
      else if (event === 'lease-lost') deps.metrics.peerLeasesLost.inc();
    },
  });
  deps.metrics.observePeers(() => {
    const members = membership.members();
    const ready = members.filter((m) => m.ready).length;
    return { ready, notReady: members.length - ready };
  });
  log.info({ self, discovery: settings.discovery, members: membership.members().length, sharePrivateLayers: settings.sharePrivateLayers }, 'sharing blobs between nodes');
  return {
    self,
    routing,
    listener: (blobs) =>
      buildPeerListener({
        signer,
        coordinator,
        blobs: {
          find: (digest, scope) => {
            const blob = blobs.find(digest, scope);
            deps.metrics.peerBlobRequests.labels(blob ? 'served' : 'not-shared').inc();
            return blob && { size: blob.size, open: (start, end) => countSent(blob.open(start, end), deps.metrics) };
          },
        },
        isLive: routing.isLive,
        log,
        onRefused: (reason) => deps.metrics.peerRefused.labels(reason).inc(),
      }),
    describe: () => ({ ...routing.describe(), coordinator: coordinator.stats() }),
    close: async () => {
      clearInterval(sweeper);
      await membership.close();
      await client.close();
    },
  };
}

/** `body`, counting what goes to other nodes; destroying either end destroys both. */
function countSent(body: Readable, metrics: Metrics): Readable {
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      metrics.peerBytesSent.inc(chunk.length);
      callback(null, chunk);
    },
  });
  pipeline(body, counter, () => undefined);
  return counter;
}
