import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { ConfigError, PEER_SECRET_PLACEHOLDER, loadConfig, type Config } from '../../src/config/load.js';

/** The node flags the server runs with wherever this repository starts it (README "Memory"). */
const SERVER_NODE_FLAGS = ['--max-semi-space-size=2', '--expose-gc'];

const root = join(import.meta.dirname, '..', '..');
const read = (p: string): string => readFileSync(join(root, p), 'utf8');

/** One `env` entry of a container: a value or a downward-API field. */
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}

interface Container {
  name: string;
  image: string;
  args?: string[];
  command?: string[];
  env?: EnvVar[];
  ports?: { name?: string; containerPort: number; hostPort?: number; protocol?: string }[];
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  livenessProbe?: { httpGet: { host?: string; path: string; port: number } };
  readinessProbe?: { httpGet: { host?: string; path: string; port: number } };
  securityContext?: Record<string, unknown>;
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
}

interface Volume {
  name: string;
  hostPath?: { path: string };
  configMap?: { name: string };
  secret?: { secretName: string; items?: unknown[] };
  projected?: { sources: Record<string, unknown>[] };
}

interface DaemonSet {
  spec: {
    selector: { matchLabels: Record<string, string> };
    template: {
      metadata: { labels: Record<string, string> };
      spec: {
        hostNetwork: boolean;
        tolerations: unknown[];
        serviceAccountName?: string;
        automountServiceAccountToken?: boolean;
        containers: Container[];
        initContainers: Container[];
        volumes: Volume[];
      };
    };
  };
}

describe('Dockerfile', () => {
  const dockerfile = read('Dockerfile');
  const lines = dockerfile.split('\n');

  it('copies only files that exist, in a multi-stage build on Node 24', () => {
    const froms = lines.filter((l) => l.startsWith('FROM '));
    expect(froms).toHaveLength(2);
    for (const f of froms) expect(f).toMatch(/^FROM node:24[-.]/);
    const copies = lines.filter((l) => l.startsWith('COPY ') && !l.includes('--from='));
    expect(copies.length).toBeGreaterThan(0);
    for (const copy of copies) {
      const parts = copy.split(/\s+/).slice(1, -1);
      for (const src of parts) expect(existsSync(join(root, src)), `${src} exists`).toBe(true);
    }
    // The build stage has every file `npm run build` names (tsc's config, the bundling script).
    const copied = copies.flatMap((copy) => copy.split(/\s+/).slice(1, -1));
    const build = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts.build ?? '';
    const named = build.split(/\s+/).filter((w) => /\.(json|mjs|js)$/.test(w));
    expect(named.length).toBeGreaterThan(0);
    for (const file of named) expect(copied.some((c) => file === c || file.startsWith(`${c}/`)), `${file} copied`).toBe(true);
    const fromBuild = lines.filter((l) => l.startsWith('COPY --from=build'));
    expect(fromBuild.map((l) => l.split(/\s+/)[2])).toEqual(['/src/package.json', '/src/node_modules', '/src/dist']);
  });

  it('builds with the commands CI uses and runs `registry-cache serve` unprivileged with a health check', () => {
    const ci = read('.ci/run');
    expect(ci).toContain('npm ci');
    expect(dockerfile).toMatch(/RUN npm ci\b/);
    const pkg = JSON.parse(read('package.json')) as { bin: Record<string, string>; scripts: Record<string, string> };
    expect(pkg.bin['registry-cache']).toBe('dist/cli.js');
    expect(pkg.scripts.prepare).toBe('npm run build');
    expect(dockerfile).toContain('ln -s /app/dist/cli.js /usr/local/bin/registry-cache');
    expect(lines.find((l) => l.startsWith('USER '))).toBe('USER 65532:65532');
    expect(dockerfile).toMatch(/HEALTHCHECK[^\n]*\n\s+CMD [^\n]*\/healthz/);
    expect(lines.find((l) => l.startsWith('ENTRYPOINT'))).toBe(`ENTRYPOINT ${JSON.stringify(['node', ...SERVER_NODE_FLAGS, '/app/dist/cli.js']).replace(/,/g, ', ')}`);
    expect(lines.find((l) => l.startsWith('CMD'))).toBe('CMD ["serve"]');
    expect(dockerfile).toContain('REGISTRY_CACHE_STORAGE=/var/lib/registry-cache');
    const ignore = read('.dockerignore').split('\n');
    for (const entry of ['node_modules', 'storage', 'dist', '.git']) expect(ignore).toContain(entry);
  });

  it('starts the server with the same node flags as `npm start` and the benchmark', () => {
    // A 2 MiB young generation, and the collection after a burst (README "Memory").
    expect(SERVER_NODE_FLAGS).toEqual(['--max-semi-space-size=2', '--expose-gc']);
    const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> };
    expect(pkg.scripts.start).toBe(`node ${SERVER_NODE_FLAGS.join(' ')} dist/cli.js serve`);
    expect(read('bench/systems.ts')).toContain(`export const SERVER_NODE_FLAGS = [${SERVER_NODE_FLAGS.map((f) => `'${f}'`).join(', ')}];`);
    expect(read('bench/scenarios/store-growth.ts')).toContain("[...SERVER_NODE_FLAGS, currentCacheCli(), 'serve'");
  });
});

/** The runtime stage's `ENV` settings (continuation lines joined). */
function imageEnv(dockerfile: string): Record<string, string> {
  const joined = dockerfile.replace(/\\\n/g, ' ');
  const runtime = joined.slice(joined.lastIndexOf('\nFROM '));
  const env: Record<string, string> = {};
  for (const line of runtime.split('\n').filter((l) => l.startsWith('ENV '))) {
    for (const pair of line.slice(4).trim().split(/\s+/)) {
      const i = pair.indexOf('=');
      env[pair.slice(0, i)] = pair.slice(i + 1);
    }
  }
  return env;
}

const isLoopback = (host: string): boolean => /^127\./.test(host) || host === '::1' || host === 'localhost';

/** A manifest as kustomize reads it. */
interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [k: string]: unknown;
}

const kustomization = parseAllDocuments(read('deploy/kustomization.yaml'))[0]?.toJS() as { resources: string[]; namespace: string; images: { name: string }[] };
const manifests = kustomization.resources.flatMap((r) => parseAllDocuments(read(join('deploy', r))).map((d) => d.toJS() as Manifest));
const findManifest = <T>(kind: string): T => manifests.find((d) => d.kind === kind) as unknown as T;
const daemonSet = findManifest<DaemonSet>('DaemonSet');
const serverContainer = daemonSet.spec.template.spec.containers.find((c) => c.name === 'registry-cache') as Container;

/** What the downward API gives the fields the manifests ask for, on a made-up node. */
const DOWNWARD: Readonly<Record<string, string>> = { 'status.podIP': '10.1.2.3', 'status.hostIP': '10.1.2.3', 'spec.nodeName': 'node-a', 'metadata.namespace': 'registry-cache' };

/**
 * A container's environment as the kubelet builds it: downward-API fields filled in, and `$(NAME)` expanded from the
 * variables defined above it (`$$` is a literal `$`; a reference to an unknown variable stays as written).
 */
function containerEnv(container: Container, downward: Readonly<Record<string, string>> = DOWNWARD): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of container.env ?? []) {
    const field = e.valueFrom?.fieldRef?.fieldPath;
    if (field !== undefined) {
      const value = downward[field];
      if (value === undefined) throw new Error(`the test does not know the downward-API field ${field}`);
      env[e.name] = value;
      continue;
    }
    env[e.name] = (e.value ?? '').replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (ref, name?: string) => (name === undefined ? '$' : (env[name] ?? ref)));
  }
  return env;
}

/**
 * Loads the configuration `container` runs with: the image's ENV, the container's env, the ConfigMap's file, and the
 * files of every Secret it mounts, laid out under a temp dir in place of their mount paths. `secrets` replaces a
 * Secret's keys (a deployer's real secret in place of the shipped placeholder).
 */
function containerConfig(container: Container, secrets: Record<string, Record<string, string>> = {}, downward: Readonly<Record<string, string>> = DOWNWARD): Config {
  const dir = mkdtempSync(join(tmpdir(), 'rc-deploy-'));
  try {
    const env: Record<string, string> = { ...imageEnv(read('Dockerfile')), ...containerEnv(container, downward) };
    const volumes = daemonSet.spec.template.spec.volumes;
    for (const mount of container.volumeMounts ?? []) {
      const secretName = volumes.find((v) => v.name === mount.name)?.secret?.secretName;
      if (secretName === undefined) continue;
      const secret = manifests.find((m) => m.kind === 'Secret' && m.metadata.name === secretName) as (Manifest & { stringData?: Record<string, string> }) | undefined;
      const files = secrets[secretName] ?? secret?.stringData ?? {};
      const local = join(dir, mount.name);
      mkdirSync(local);
      for (const [key, value] of Object.entries(files)) writeFileSync(join(local, key), value);
      for (const [name, value] of Object.entries(env)) if (value.startsWith(`${mount.mountPath}/`)) env[name] = local + value.slice(mount.mountPath.length);
    }
    const args = container.args ?? [];
    const file = join(dir, 'config.yaml');
    writeFileSync(file, findManifest<{ data: Record<string, string> }>('ConfigMap').data['config.yaml'] as string);
    expect(args[args.indexOf('--config') + 1]).toBe('/etc/registry-cache/config.yaml');
    return loadConfig({ file, env });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A secret a deployer would put in the Secret: 48 random bytes, base64. */
const DEPLOYED_SECRET = { 'registry-cache-peer': { secret: 'k3O5m0p8gqXh3s7yE1oZl2Rr9vTtWc4UaJbNdFfGhKiLmNoPqRsTuVwXyZ012345' } };

describe('the shipped deployment: the registry on loopback, the operations listener on the node address', () => {
  const dockerfile = read('Dockerfile');
  const env = imageEnv(dockerfile);
  const ds = parseAllDocuments(read('deploy/daemonset.yaml'))[0]?.toJS() as DaemonSet;

  it('the image alone (docker run, no config file) serves the registry API on loopback', () => {
    expect(env.REGISTRY_CACHE_STORAGE).toBe('/var/lib/registry-cache');
    const config = loadConfig({ env });
    expect(isLoopback(config.listen.host)).toBe(true);
    expect(config.metricsListen === undefined || isLoopback(config.metricsListen.host)).toBe(true);
  });

  it('the DaemonSet (image environment, container environment, ConfigMap file) binds the registry to loopback, even if an environment sets 0.0.0.0', () => {
    const server = ds.spec.template.spec.containers.find((c) => c.name === 'registry-cache') as Container;
    const shipped = containerConfig(server, DEPLOYED_SECRET);
    const widened = containerConfig({ ...server, env: [...(server.env ?? []), { name: 'REGISTRY_CACHE_LISTEN', value: '0.0.0.0:5000' }] }, DEPLOYED_SECRET);
    expect(shipped.listen).toEqual({ host: '127.0.0.1', port: 5000 });
    // The defect this guards: an environment variable silently overriding the file's loopback address.
    expect(widened.listen.host).toBe('127.0.0.1');
  });

  it('binds the operations listener to the node address (status.hostIP), port 5001, on IPv4 and IPv6 nodes', () => {
    const server = ds.spec.template.spec.containers.find((c) => c.name === 'registry-cache') as Container;
    const hostIpVariables = (server.env ?? []).filter((e) => e.valueFrom?.fieldRef?.fieldPath === 'status.hostIP');
    expect(hostIpVariables).toHaveLength(1);
    const v4 = containerConfig(server, DEPLOYED_SECRET, { ...DOWNWARD, 'status.hostIP': '192.0.2.7' });
    const v6 = containerConfig(server, DEPLOYED_SECRET, { ...DOWNWARD, 'status.hostIP': 'fd00::7' });
    expect(v4.metricsListen).toEqual({ host: '192.0.2.7', port: 5001 });
    expect(v6.metricsListen).toEqual({ host: 'fd00::7', port: 5001 });
    expect(v4.listen).toEqual({ host: '127.0.0.1', port: 5000 });
    // The kubelet probes the pod IP (the node's, in the host network), where the operations listener is.
    expect(ds.spec.template.spec.hostNetwork).toBe(true);
    expect(server.livenessProbe?.httpGet).toEqual({ path: '/healthz', port: 5001 });
    expect(server.readinessProbe?.httpGet).toEqual({ path: '/readyz', port: 5001 });
    expect(server.ports).toContainEqual(expect.objectContaining({ name: 'metrics', containerPort: 5001 }));
  });
});

describe('deploy/ kustomize base', () => {
  const docs = manifests;
  const byKind = findManifest;

  it('lists resources that exist: a Namespace, a ConfigMap, a DaemonSet, and what sharing between nodes needs', () => {
    for (const r of kustomization.resources) expect(existsSync(join(root, 'deploy', r))).toBe(true);
    expect(docs.map((d) => d.kind).sort()).toEqual(['ConfigMap', 'DaemonSet', 'Namespace', 'Role', 'RoleBinding', 'Secret', 'Service', 'ServiceAccount']);
    expect(byKind<{ metadata: { name: string } }>('Namespace').metadata.name).toBe(kustomization.namespace);
  });

  it('ships a config the cache itself accepts', () => {
    const text = byKind<{ data: Record<string, string> }>('ConfigMap').data['config.yaml'] as string;
    const dir = mkdtempSync(join(tmpdir(), 'rc-deploy-'));
    writeFileSync(join(dir, 'config.yaml'), text);
    const config = loadConfig({ file: join(dir, 'config.yaml'), env: {} });
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 5000 });
    expect(config.storage).toBe('/var/lib/registry-cache');
    // The DaemonSet sets it to the node's address; the file alone has none.
    expect(config.metricsListen).toBeUndefined();
  });

  it('runs on every node in the host network, probed, resourced and locked down', () => {
    const ds = byKind<DaemonSet>('DaemonSet');
    const spec = ds.spec.template.spec;
    expect(spec.hostNetwork).toBe(true);
    expect(spec.tolerations).toContainEqual({ operator: 'Exists' });
    expect(ds.spec.selector.matchLabels).toEqual(ds.spec.template.metadata.labels);
    const images = new Set(kustomization.images.map((i) => i.name));
    const server = spec.containers.find((c) => c.name === 'registry-cache') as Container;
    for (const c of [...spec.containers, ...spec.initContainers]) expect(images.has(c.image)).toBe(true);
    expect(server.args).toEqual(['serve', '--config', '/etc/registry-cache/config.yaml']);
    expect(server.resources?.requests).toMatchObject({ cpu: expect.any(String), memory: expect.any(String) });
    expect(server.resources?.limits?.memory).toBeDefined();
    expect(server.securityContext).toMatchObject({ runAsNonRoot: true, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
    const volumes = Object.fromEntries(spec.volumes.map((v) => [v.name, v]));
    expect(volumes.store?.hostPath?.path).toBe('/var/lib/registry-cache');
    expect(volumes['containerd-certs']?.hostPath?.path).toBe('/etc/containerd/certs.d');
    for (const m of server.volumeMounts ?? []) expect(volumes[m.name]).toBeDefined();
    const hosts = spec.initContainers.find((c) => c.name === 'containerd-hosts') as Container;
    expect(hosts.args?.slice(0, 3)).toEqual(['hosts', '--certs-dir', '/etc/containerd/certs.d']);
    expect(hosts.args).toContain('http://127.0.0.1:5000');
  });
});

describe('deploy/ shares blobs between nodes', () => {
  const spec = daemonSet.spec.template.spec;
  const service = findManifest<Manifest & { spec: { clusterIP?: string; selector: Record<string, string>; ports: { name: string; port: number; targetPort: number | string; protocol?: string }[] } }>('Service');
  const role = findManifest<Manifest & { rules: { apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] }[] }>('Role');
  const binding = findManifest<Manifest & { roleRef: { apiGroup: string; kind: string; name: string }; subjects: { kind: string; name: string; namespace?: string }[] }>('RoleBinding');
  const account = findManifest<Manifest & { automountServiceAccountToken?: boolean }>('ServiceAccount');
  const secret = findManifest<Manifest & { stringData?: Record<string, string>; data?: Record<string, string> }>('Secret');
  const byEnvName = (c: Container, name: string): EnvVar | undefined => c.env?.find((e) => e.name === name);

  it('turns sharing on in the server container only: Kubernetes discovery of the Service, listening on the pod IP', () => {
    const config = containerConfig(serverContainer, DEPLOYED_SECRET);
    expect(config.peers).toMatchObject({ discovery: 'kubernetes', service: service.metadata.name, listen: { host: DOWNWARD['status.podIP'], port: 5002 }, members: [] });
    expect(config.peers?.secret.toString()).toBe(DEPLOYED_SECRET['registry-cache-peer'].secret);
    // The hosts init container reads the same file; sharing off there, so it needs neither the secret nor the pod IP.
    for (const init of spec.initContainers.filter((c) => c.args?.includes('--config'))) expect(containerConfig(init).peers, init.name).toBeUndefined();
  });

  it('gives the server the downward-API variables membership reads: POD_IP, NODE_NAME and POD_NAMESPACE', () => {
    expect(byEnvName(serverContainer, 'POD_IP')?.valueFrom).toEqual({ fieldRef: { fieldPath: 'status.podIP' } });
    expect(byEnvName(serverContainer, 'NODE_NAME')?.valueFrom).toEqual({ fieldRef: { fieldPath: 'spec.nodeName' } });
    expect(byEnvName(serverContainer, 'POD_NAMESPACE')?.valueFrom).toEqual({ fieldRef: { fieldPath: 'metadata.namespace' } });
    // Kubernetes expands $(POD_IP) only from a variable defined above the one that uses it.
    const names = (serverContainer.env ?? []).map((e) => e.name);
    expect(names.indexOf('POD_IP')).toBeLessThan(names.indexOf('REGISTRY_CACHE_PEER_LISTEN'));
    expect(byEnvName(serverContainer, 'REGISTRY_CACHE_PEER_LISTEN')?.value).toContain('$(POD_IP)');
  });

  it('uses one peer port everywhere: the Service, the container port, the listener and the port name the config looks for', () => {
    const config = containerConfig(serverContainer, DEPLOYED_SECRET);
    expect(service.spec.clusterIP).toBe('None');
    // The Service selects exactly the DaemonSet's pods.
    expect(service.spec.selector).toEqual(daemonSet.spec.selector.matchLabels);
    expect(service.spec.ports).toHaveLength(1);
    const port = service.spec.ports[0] as (typeof service.spec.ports)[number];
    expect(port.name).toBe(config.peers?.portName);
    const containerPort = serverContainer.ports?.find((p) => p.name === port.targetPort || p.containerPort === port.targetPort);
    expect(containerPort).toEqual({ name: 'peer', containerPort: config.peers?.listen.port, hostPort: config.peers?.listen.port, protocol: 'TCP' });
    expect(port.port).toBe(config.peers?.listen.port);
    // Every port of the pod is distinct: the peer listener must not collide with the registry or metrics ports.
    const numbers = (serverContainer.ports ?? []).map((p) => p.containerPort);
    expect(new Set(numbers).size).toBe(numbers.length);
  });

  it('grants the pods exactly get, list and watch on EndpointSlices in their own namespace, and nothing cluster-wide', () => {
    expect(manifests.filter((m) => /^Cluster/.test(m.kind))).toEqual([]);
    expect(role.rules).toEqual([{ apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['get', 'list', 'watch'] }]);
    expect(role.metadata.namespace ?? kustomization.namespace).toBe(kustomization.namespace);
    expect(binding.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: role.metadata.name });
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: account.metadata.name, namespace: kustomization.namespace }]);
    expect(spec.serviceAccountName).toBe(account.metadata.name);
  });

  it('mounts the API token into the server container alone, not into the init containers that run as root', () => {
    expect(spec.automountServiceAccountToken).toBe(false);
    expect(account.automountServiceAccountToken).toBe(false);
    const tokenDir = '/var/run/secrets/kubernetes.io/serviceaccount';
    const mount = serverContainer.volumeMounts?.find((m) => m.mountPath === tokenDir);
    expect(mount?.readOnly).toBe(true);
    const sources = spec.volumes.find((v) => v.name === mount?.name)?.projected?.sources ?? [];
    // What the in-cluster client reads: token, ca.crt and namespace.
    expect(sources).toContainEqual({ serviceAccountToken: expect.objectContaining({ path: 'token' }) });
    expect(sources).toContainEqual({ configMap: { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] } });
    expect(sources).toContainEqual({ downwardAPI: { items: [{ path: 'namespace', fieldRef: { fieldPath: 'metadata.namespace' } }] } });
    for (const c of spec.initContainers) expect(c.volumeMounts?.some((m) => m.name === mount?.name), c.name).toBe(false);
  });

  it('mounts the peer Secret read-only as the file peerSecret names, in the server container alone', () => {
    const volume = spec.volumes.find((v) => v.secret?.secretName === secret.metadata.name);
    expect(volume).toBeDefined();
    const mount = serverContainer.volumeMounts?.find((m) => m.name === volume?.name);
    expect(mount?.readOnly).toBe(true);
    const file = byEnvName(serverContainer, 'REGISTRY_CACHE_PEER_SECRET')?.value ?? '';
    expect(Object.keys(secret.stringData ?? {})).toContain(file.slice(`${mount?.mountPath}/`.length));
    for (const c of spec.initContainers) expect(c.volumeMounts?.some((m) => m.name === volume?.name), c.name).toBe(false);
  });

  it('ships a placeholder secret the server refuses to start with, naming the key', () => {
    expect(secret.stringData?.secret).toBe(PEER_SECRET_PLACEHOLDER);
    expect(secret.data).toBeUndefined();
    let error: unknown;
    try {
      containerConfig(serverContainer);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).problems.map((p) => p.key)).toEqual(['peerSecret']);
    expect((error as ConfigError).message).toContain('placeholder');
  });
});
