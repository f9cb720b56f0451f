
/** One registry-cache node as its peers see it. */
export interface PeerMember {
  /** `host:port` of its peer listener; also its identity on the ring. */
  address: string;
  /** Only ready members coordinate or serve; others are listed for operators. */
  ready: boolean;
  /** The Kubernetes node it runs on, when known. */
  nodeName?: string;
}

/** The other members of the cluster, kept current in memory (never an API call per request). */
export interface Membership {
  /** Every known member but this node, ready or not. */
  members(): readonly PeerMember[];
  /** Calls `listener` after every change; returns the unsubscribe function. */
  onChange(listener: () => void): () => void;
  close(): Promise<void>;
}

/** Addresses of the ready members, for the ring. */
export function readyAddresses(membership: Membership): string[] {
  return membership.members().filter((m) => m.ready).map((m) => m.address);
}

/** A fixed member list (`peers` in the configuration): development, tests, the benchmark, clusters without the API. */
export class StaticMembership implements Membership {
  private readonly list: PeerMember[];

  constructor(peers: readonly string[], self: string | undefined) {
    this.list = [...new Set(peers)].filter((p) => p !== self).map((address) => ({ address, ready: true }));
  }

  members(): readonly PeerMember[] {
    return this.list;
  }

  onChange(): () => void {
    return () => undefined;
  }

  async close(): Promise<void> {}
}
