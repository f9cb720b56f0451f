import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { KubeConfig, type V1EndpointSlice } from '@kubernetes/client-node';

/** A watch event as the API server streams it. */
export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED';

/**
 * A Kubernetes API server double on loopback that serves one resource, EndpointSlices of one namespace: list (with
 * a resourceVersion) and watch (a chunked stream of JSON events), over real HTTP so the official client runs as in
 * a cluster. It records every request, so tests can prove the client lists and watches instead of polling.
 */
export interface FakeKubernetes {
  url: string;
  kubeConfig: KubeConfig;
  /** Every request's method and URL. */
  requests: { method: string; url: string }[];
  /** Sets a slice and streams the event to open watches. */
  emit(type: WatchEventType, slice: V1EndpointSlice): void;
  /** Resolves when at least `n` watches have connected. */
  watching(n?: number): Promise<void>;
  close(): Promise<void>;
}

/** Starts the fake API server with these slices present. */
export async function startFakeKubernetes(namespace: string, initial: V1EndpointSlice[]): Promise<FakeKubernetes> {
  let version = 1;
  const slices = new Map<string, V1EndpointSlice>();
  const stamp = (slice: V1EndpointSlice): V1EndpointSlice => ({ ...slice, metadata: { ...slice.metadata, namespace, resourceVersion: String(++version) } });
  for (const s of initial) slices.set(s.metadata?.name ?? '', stamp(s));
  const watches = new Set<ServerResponse>();
  const requests: { method: string; url: string }[] = [];
  let watchCount = 0;
  const waiters: { n: number; resolve: () => void }[] = [];
  const base = `/apis/discovery.k8s.io/v1/namespaces/${namespace}/endpointslices`;

  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    requests.push({ method: req.method ?? '', url: req.url ?? '' });
    const url = new URL(req.url ?? '/', 'http://fake');
    if (url.pathname !== base) {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'Status', code: 404 }));
      return;
    }
    if (url.searchParams.get('watch') === 'true' || url.searchParams.get('watch') === '1') {
      res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
      res.flushHeaders();
      watches.add(res);
      watchCount += 1;
      for (const w of waiters.filter((x) => watchCount >= x.n)) w.resolve();
      req.on('close', () => watches.delete(res));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSliceList', metadata: { resourceVersion: String(version) }, items: [...slices.values()] }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromOptions({
    clusters: [{ name: 'fake', server: url, skipTLSVerify: true }],
    users: [{ name: 'fake', token: 'fake-token' }],
    contexts: [{ name: 'fake', cluster: 'fake', user: 'fake', namespace }],
    currentContext: 'fake',
  });

  return {
    url,
    kubeConfig,
    requests,
    emit(type, slice) {
      const stamped = stamp(slice);
      if (type === 'DELETED') slices.delete(slice.metadata?.name ?? '');
      else slices.set(slice.metadata?.name ?? '', stamped);
      const line = `${JSON.stringify({ type, object: { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', ...stamped } })}\n`;
      for (const w of watches) w.write(line);
    },
    watching(n = 1) {
      if (watchCount >= n) return Promise.resolve();
      return new Promise((resolve) => waiters.push({ n, resolve }));
    },
    async close() {
      for (const w of watches) w.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** An EndpointSlice of `service` with these endpoints on the named port. */
export function endpointSlice(name: string, service: string, port: { name: string; port: number }, endpoints: { ip: string; ready?: boolean; nodeName?: string }[]): V1EndpointSlice {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    addressType: 'IPv4',
    metadata: { name, labels: { 'kubernetes.io/service-name': service } },
    ports: [{ name: port.name, port: port.port, protocol: 'TCP' }],
    endpoints: endpoints.map((e) => ({ addresses: [e.ip], conditions: { ready: e.ready ?? true }, ...(e.nodeName ? { nodeName: e.nodeName } : {}) })),
  };
}
