import { existsSync, readFileSync, rmSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { loadConfig } from '../../src/config/load.js';

const root = join(import.meta.dirname, '..', '..');
const read = (p: string): string => readFileSync(join(root, p), 'utf8');

interface Container {
  name: string;
  image: string;
  args?: string[];
  command?: string[];
  ports?: { containerPort: number; hostPort?: number }[];
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  livenessProbe?: { httpGet: { host?: string; path: string; port: number } };
  readinessProbe?: { httpGet: { host?: string; path: string; port: number } };
  securityContext?: Record<string, unknown>;
  volumeMounts?: { name: string; mountPath: string }[];
}

interface DaemonSet {
  spec: {
    selector: { matchLabels: Record<string, string> };
    template: {
      metadata: { labels: Record<string, string> };
      spec: { hostNetwork: boolean; tolerations: unknown[]; containers: Container[]; initContainers: Container[]; volumes: { name: string; hostPath?: { path: string } }[] };
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
    expect(lines.find((l) => l.startsWith('ENTRYPOINT'))).toBe('ENTRYPOINT ["registry-cache"]');
    expect(lines.find((l) => l.startsWith('CMD'))).toBe('CMD ["serve"]');
    expect(dockerfile).toContain('REGISTRY_CACHE_STORAGE=/var/lib/registry-cache');
    const ignore = read('.dockerignore').split('\n');
    for (const entry of ['node_modules', 'storage', 'dist', '.git']) expect(ignore).toContain(entry);
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

describe('the shipped deployment listens on loopback only', () => {
  const dockerfile = read('Dockerfile');
  const env = imageEnv(dockerfile);
  const configMap = parseAllDocuments(read('deploy/configmap.yaml'))[0]?.toJS() as { data: Record<string, string> };
  const ds = parseAllDocuments(read('deploy/daemonset.yaml'))[0]?.toJS() as DaemonSet;

  it('the image alone (docker run, no config file) serves the registry API on loopback', () => {
    expect(env.REGISTRY_CACHE_STORAGE).toBe('/var/lib/registry-cache');
    const config = loadConfig({ env });
    expect(isLoopback(config.listen.host)).toBe(true);
    expect(config.metricsListen === undefined || isLoopback(config.metricsListen.host)).toBe(true);
  });

  it('the DaemonSet (image environment, container environment, ConfigMap file) listens on loopback, even if an image sets 0.0.0.0', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rc-deploy-'));
    const file = join(dir, 'config.yaml');
    writeFileSync(file, configMap.data['config.yaml'] as string);
    const server = ds.spec.template.spec.containers.find((c) => c.name === 'registry-cache') as Container & { env?: { name: string; value?: string }[] };
    const containerEnv = Object.fromEntries((server.env ?? []).map((e) => [e.name, e.value ?? '']));
    const [shipped, widened] = (() => {
      try {
        return [
          loadConfig({ file, env: { ...env, ...containerEnv } }),
          loadConfig({ file, env: { ...env, ...containerEnv, REGISTRY_CACHE_LISTEN: '0.0.0.0:5000', REGISTRY_CACHE_METRICS_LISTEN: '0.0.0.0:5001' } }),
        ];
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    })();
    expect(shipped.listen).toEqual({ host: '127.0.0.1', port: 5000 });
    expect(shipped.metricsListen).toEqual({ host: '127.0.0.1', port: 5001 });
    // The defect this guards: an image default in the environment silently overriding the file's loopback address.
    expect(widened.listen.host).toBe('127.0.0.1');
    expect(widened.metricsListen?.host).toBe('127.0.0.1');
  });
});

describe('deploy/ kustomize base', () => {
  const kustomization = parseAllDocuments(read('deploy/kustomization.yaml'))[0]?.toJS() as { resources: string[]; namespace: string; images: { name: string }[] };
  const docs = kustomization.resources.flatMap((r) => parseAllDocuments(read(join('deploy', r))).map((d) => d.toJS() as { kind: string; metadata: { name: string }; [k: string]: unknown }));
  const byKind = <T>(kind: string): T => docs.find((d) => d.kind === kind) as unknown as T;

  it('lists resources that exist: a Namespace, a ConfigMap and a DaemonSet', () => {
    for (const r of kustomization.resources) expect(existsSync(join(root, 'deploy', r))).toBe(true);
    expect(docs.map((d) => d.kind).sort()).toEqual(['ConfigMap', 'DaemonSet', 'Namespace']);
    expect(byKind<{ metadata: { name: string } }>('Namespace').metadata.name).toBe(kustomization.namespace);
  });

  it('ships a config the cache itself accepts', () => {
    const text = byKind<{ data: Record<string, string> }>('ConfigMap').data['config.yaml'] as string;
    const dir = mkdtempSync(join(tmpdir(), 'rc-deploy-'));
    writeFileSync(join(dir, 'config.yaml'), text);
    const config = loadConfig({ file: join(dir, 'config.yaml'), env: {} });
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 5000 });
    expect(config.storage).toBe('/var/lib/registry-cache');
    expect(config.metricsListen).toEqual({ host: '127.0.0.1', port: 5001 });
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
    expect(server.livenessProbe?.httpGet).toEqual({ host: '127.0.0.1', path: '/healthz', port: 5001 });
    expect(server.readinessProbe?.httpGet).toEqual({ host: '127.0.0.1', path: '/readyz', port: 5001 });
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
