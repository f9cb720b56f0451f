import { readFile } from 'node:fs/promises';
import { DiscoveryV1Api, KubeConfig, makeInformer, type Informer, type ObjectCache, type V1EndpointSlice } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { Membership, PeerMember } from './membership.js';

// Loaded only with peerDiscovery: kubernetes (the client takes a second or more to import): see peer-sharing.ts.

/** Where a Kubernetes membership looks. */
export interface KubernetesMembershipOptions {
  /** The headless Service whose EndpointSlices list the DaemonSet's pods. */
  service: string;
  namespace: string;
  /** Name of the Service port that is the peer listener (the first port when absent from the slice). */
  portName: string;
  /** This pod's IP (downward API `status.podIP`), left out of the members. */
  selfIp: string | undefined;
  /** In-cluster configuration when absent. */
  kubeConfig?: KubeConfig;
  log: Logger;
}

const NAMESPACE_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/namespace';

/** This pod's namespace: `POD_NAMESPACE`, else the service account's namespace file. */
export async function podNamespace(env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  if (env.POD_NAMESPACE) return env.POD_NAMESPACE;
  try {
    return (await readFile(NAMESPACE_FILE, 'utf8')).trim() || undefined;
  } catch {
    return undefined;
  }
}

/**
 * Members from the `discovery.k8s.io/v1` EndpointSlices of a headless Service, through one list + watch (an
 * informer) of the official client. The informer reconnects by itself; while it is disconnected the last known
 * members stay in use, which is safe because a dead member only costs a fallback to the upstream.
 */
export class KubernetesMembership implements Membership {
  private current: PeerMember[] = [];
  private readonly listeners = new Set<() => void>();

  private constructor(
    private readonly informer: Informer<V1EndpointSlice> & ObjectCache<V1EndpointSlice>,
    private readonly options: KubernetesMembershipOptions,
  ) {}

  /** Starts the informer and resolves once the first list has arrived. */
  static async start(options: KubernetesMembershipOptions): Promise<KubernetesMembership> {
    const kc = options.kubeConfig ?? inClusterConfig();
    const api = kc.makeApiClient(DiscoveryV1Api);
    const labelSelector = `kubernetes.io/service-name=${options.service}`;
    const path = `/apis/discovery.k8s.io/v1/namespaces/${options.namespace}/endpointslices`;
    const informer = makeInformer<V1EndpointSlice>(kc, path, () => api.listNamespacedEndpointSlice({ namespace: options.namespace, labelSelector }), labelSelector);
    const membership = new KubernetesMembership(informer, options);
    const refresh = (): void => membership.refresh();
    informer.on('add', refresh);
    informer.on('update', refresh);
    informer.on('delete', refresh);
    informer.on('error', (err: unknown) => {
      options.log.warn({ err: err instanceof Error ? { message: err.message } : { message: String(err) } }, 'peer membership watch failed; keeping the last members and retrying');
      // The informer stops on an error; start again after a pause (members stay as they were meanwhile).
      setTimeout(() => void informer.start().catch(() => undefined), 2_000).unref();
    });
    await informer.start();
    membership.refresh();
    return membership;
  }

  members(): readonly PeerMember[] {
    return this.current;
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    this.listeners.clear();
    await this.informer.stop();
  }

  private refresh(): void {
    const next = membersFromSlices(this.informer.list(this.options.namespace), this.options.portName, this.options.selfIp);
    const same = next.length === this.current.length && next.every((m, i) => sameMember(m, this.current[i]));
    this.current = next;
    if (!same) for (const listener of this.listeners) listener();
  }
}

/** The members an EndpointSlice list describes, sorted by address; an endpoint in several slices counts once. */
export function membersFromSlices(slices: readonly V1EndpointSlice[], portName: string, selfIp: string | undefined): PeerMember[] {
  const byAddress = new Map<string, PeerMember>();
  for (const slice of slices) {
    const port = (slice.ports ?? []).find((p) => p.name === portName)?.port ?? slice.ports?.[0]?.port;
    if (port === undefined) continue;
    for (const endpoint of slice.endpoints ?? []) {
      // EndpointSlice semantics: a missing `ready` means ready; `terminating` endpoints are on their way out.
      const ready = endpoint.conditions?.ready !== false && endpoint.conditions?.terminating !== true;
      for (const ip of endpoint.addresses ?? []) {
        if (ip === selfIp) continue;
        const address = ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
        const member: PeerMember = { address, ready, ...(endpoint.nodeName ? { nodeName: endpoint.nodeName } : {}) };
        const prior = byAddress.get(address);
        byAddress.set(address, prior ? { ...prior, ready: prior.ready || ready } : member);
      }
    }
  }
  return [...byAddress.values()].sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
}

function sameMember(a: PeerMember, b: PeerMember | undefined): boolean {
  return b !== undefined && a.address === b.address && a.ready === b.ready && a.nodeName === b.nodeName;
}

function inClusterConfig(): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromCluster();
  return kc;
}
