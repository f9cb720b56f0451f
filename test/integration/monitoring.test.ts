import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';

const root = join(import.meta.dirname, '..', '..');
const read = (p: string): string => readFileSync(join(root, p), 'utf8');

/** PromQL words that are not metric names: functions, aggregations, operators, modifiers. */
const PROMQL_WORDS = new Set([
  'sum', 'min', 'max', 'avg', 'count', 'stddev', 'topk', 'bottomk', 'quantile', 'count_values', 'group',
  'rate', 'irate', 'increase', 'delta', 'deriv', 'histogram_quantile', 'clamp_min', 'clamp_max', 'abs', 'absent', 'vector', 'scalar', 'time',
  'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset',
]);

/** The metric names an expression reads: what is left after strings, matchers, ranges, label lists, variables and PromQL words. */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\$\{?\w+\}?/g, ' ');
  return (stripped.match(/(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*/g) ?? []).filter((t) => !PROMQL_WORDS.has(t));
}

/** Every series name a live exposition can produce: each `# TYPE` family, with a histogram's _bucket/_sum/_count. */
function exportedNames(exposition: string): Set<string> {
  const names = new Set<string>();
  for (const m of exposition.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, name, type] = m as unknown as [string, string, string];
    names.add(name);
    if (type === 'histogram' || type === 'summary') for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${name}${suffix}`);
  }
  return names;
}

interface Panel {
  type: string;
  title: string;
  datasource?: { uid: string };
  targets?: { expr: string; datasource?: { uid: string } }[];
  panels?: Panel[];
}

interface Dashboard {
  templating: { list: { name: string; type: string; query: string | { query: string }; datasource?: { uid: string } }[] };
  panels: Panel[];
}

interface Rule {
  alert: string;
  expr: string;
  for: string;
  labels: { severity: string };
  annotations: Record<string, string>;
}

describe('monitoring: dashboard and alerts read only what the server exports', () => {
  let upstream: FakeUpstream;
  let cache: TestCache;
  let exported: Set<string>;

  beforeAll(async () => {
    upstream = await new FakeUpstream().start();
    cache = await startCache({ [upstream.host]: upstream.url }, { metricsListen: '127.0.0.1:0' });
    // One pull, so labelled families have samples too (names come from # TYPE lines either way).
    const image = makeImage([1000]);
    upstream.push('pub/app', 'v1', image);
    await call(`${cache.url}/v2/pub/app/manifests/v1?ns=${upstream.host}`);
    const res = await call(`${cache.opsUrl}/metrics`);
    expect(res.status).toBe(200);
    exported = exportedNames(res.body.toString());
  });

  afterAll(async () => {
    await cache?.stop();
    await upstream?.stop();
  });

  it("exports the process's own metrics under one registry_cache_ prefix, as Node's client names them", () => {
    expect(exported.has('registry_cache_process_resident_memory_bytes')).toBe(true);
    expect(exported.has('registry_cache_nodejs_eventloop_lag_seconds')).toBe(true);
    expect([...exported].filter((name) => name.includes('process_process') || name.startsWith('registry_cache_process_nodejs'))).toEqual([]);
  });

  it('finds the metric names of an expression, and only those', () => {
    expect(
      metricNames('histogram_quantile(0.95, sum by (route, le) (rate(registry_cache_x_bucket{node=~"$node",a="b c"}[$__rate_interval]))) / ignoring(threshold) up'),
    ).toEqual(['registry_cache_x_bucket', 'up']);
  });

  it('the Grafana dashboard has datasource and node variables, every panel the issue lists, and reads only exported metrics', () => {
    const dashboard = JSON.parse(read('deploy/monitoring/grafana-dashboard.json')) as Dashboard;
    const variables = Object.fromEntries(dashboard.templating.list.map((v) => [v.name, v]));
    expect(variables.datasource?.type).toBe('datasource');
    expect(variables.datasource?.query).toBe('prometheus');
    expect(variables.node?.type).toBe('query');
    const nodeQuery = variables.node?.query;
    const nodeExpr = typeof nodeQuery === 'string' ? nodeQuery : (nodeQuery?.query ?? '');
    const labelValues = /^label_values\((\w+), node\)$/.exec(nodeExpr);
    expect(labelValues, nodeExpr).not.toBeNull();
    expect(exported.has(labelValues?.[1] as string)).toBe(true);

    const panels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]).filter((p) => p.type !== 'row');
    const titles = panels.map((p) => p.title);
    for (const title of [
      'Hit ratio',
      'Bytes served by source',
      'Upstream egress and what it saved',
      'Requests by route and status',
      'Latency by route',
      'Upstream latency by registry',
      'Upstream errors by registry',
      'Pulls in flight and queued',
      'Pull queue wait',
      'Verification outcomes by policy',
      'Store usage against thresholds',
      'Evictions',
    ]) {
      expect(titles).toContain(title);
    }
    let expressions = 0;
    for (const panel of panels) {
      expect(panel.datasource?.uid, panel.title).toBe('${datasource}');
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
      for (const target of panel.targets ?? []) {
        expressions++;
        // Every panel is per node: the variable selects which.
        expect(target.expr, panel.title).toContain('node=~"$node"');
        const names = metricNames(target.expr);
        expect(names.length, target.expr).toBeGreaterThan(0);
        for (const name of names) expect(exported.has(name), `${panel.title}: ${name} is not exported by the server`).toBe(true);
      }
    }
    expect(expressions).toBeGreaterThan(20);
    // Bytes by source covers every source label the server uses: store, upstream, and peer once sharing serves bytes.
    const bySource = panels.find((p) => p.title === 'Bytes served by source');
    expect(bySource?.targets?.[0]?.expr).toMatch(/sum by \(source\) \(rate\(registry_cache_bytes_served_total/);
  });

  it('the PrometheusRule parses, alerts on the five conditions for their durations with exported metrics, and README has a runbook line for each', () => {
    const [doc, ...rest] = parseAllDocuments(read('deploy/monitoring/prometheusrule.yaml'));
    expect(rest).toHaveLength(0);
    expect(doc?.errors).toEqual([]);
    const rule = doc?.toJS() as { apiVersion: string; kind: string; spec: { groups: { name: string; rules: Rule[] }[] } };
    expect(rule.apiVersion).toBe('monitoring.coreos.com/v1');
    expect(rule.kind).toBe('PrometheusRule');
    const rules = rule.spec.groups.flatMap((g) => g.rules);
    const byName = Object.fromEntries(rules.map((r) => [r.alert, r]));
    expect(Object.fromEntries(rules.map((r) => [r.alert, r.for]))).toEqual({
      RegistryCacheUpstreamErrors: '10m',
      RegistryCacheStoreAboveHighThreshold: '15m',
      RegistryCachePullsQueuedTooLong: '5m',
      RegistryCacheVerificationRefusals: '5m',
      RegistryCacheDown: '5m',
    });
    expect(byName.RegistryCachePullsQueuedTooLong?.expr).toContain('registry_cache_pull_queue_timeout_seconds / 2');
    expect(byName.RegistryCacheStoreAboveHighThreshold?.expr).toContain('threshold="high"');
    const readme = read('README.md');
    const runbook = readme.slice(readme.indexOf('### Alerts'));
    for (const r of rules) {
      expect(['warning', 'critical']).toContain(r.labels.severity);
      expect(r.annotations.summary, r.alert).toBeDefined();
      expect(r.annotations.runbook).toBe(`README.md, Alerts: ${r.alert}`);
      expect(runbook, r.alert).toMatch(new RegExp(`\\| \`${r.alert}\` \\|[^\\n]+\\|`));
      for (const name of metricNames(r.expr)) {
        // `up` is Prometheus's own series for every scrape target.
        if (name !== 'up') expect(exported.has(name), `${r.alert}: ${name} is not exported by the server`).toBe(true);
      }
    }
  });

  it('ships as its own kustomization: PodMonitor on the metrics port with a node label, the rule, the dashboard for the Grafana sidecar; the base needs none of their CRDs', () => {
    const k = parseAllDocuments(read('deploy/monitoring/kustomization.yaml'))[0]?.toJS() as {
      kind: string;
      namespace: string;
      resources: string[];
      configMapGenerator: { name: string; files: string[]; options: { labels: Record<string, string> } }[];
    };
    expect(k.kind).toBe('Kustomization');
    expect(k.namespace).toBe('registry-cache');
    for (const r of k.resources) expect(existsSync(join(root, 'deploy/monitoring', r))).toBe(true);
    expect(k.configMapGenerator[0]?.files).toEqual(['grafana-dashboard.json']);
    expect(k.configMapGenerator[0]?.options.labels).toEqual({ grafana_dashboard: '1' });
    const kinds = k.resources.flatMap((r) => parseAllDocuments(read(join('deploy/monitoring', r))).map((d) => d.toJS() as { kind: string; spec: unknown }));
    expect(kinds.map((d) => d.kind).sort()).toEqual(['PodMonitor', 'PrometheusRule']);
    const podMonitor = kinds.find((d) => d.kind === 'PodMonitor')?.spec as {
      selector: { matchLabels: Record<string, string> };
      podMetricsEndpoints: { port: string; path: string; relabelings: { sourceLabels?: string[]; targetLabel: string }[] }[];
    };
    const ds = parseAllDocuments(read('deploy/daemonset.yaml'))[0]?.toJS() as {
      spec: { template: { metadata: { labels: Record<string, string> }; spec: { containers: { ports: { name: string; containerPort: number }[] }[] } } };
    };
    expect(ds.spec.template.metadata.labels).toMatchObject(podMonitor.selector.matchLabels);
    const endpoint = podMonitor.podMetricsEndpoints[0];
    expect(endpoint?.path).toBe('/metrics');
    expect(ds.spec.template.spec.containers[0]?.ports).toContainEqual({ name: endpoint?.port, containerPort: 5001, hostPort: 5001, protocol: 'TCP' });
    expect(endpoint?.relabelings).toContainEqual({ sourceLabels: ['__meta_kubernetes_pod_node_name'], targetLabel: 'node' });
    const base = parseAllDocuments(read('deploy/kustomization.yaml'))[0]?.toJS() as { resources: string[] };
    const baseKinds = base.resources.flatMap((r) => parseAllDocuments(read(join('deploy', r))).map((d) => (d.toJS() as { apiVersion: string }).apiVersion));
    expect(baseKinds.filter((v) => v.startsWith('monitoring.coreos.com'))).toEqual([]);
  });

  it('README says what the operations listener exposes and to whom, and shows the status page during a pull', () => {
    const readme = read('README.md');
    const section = readme.slice(readme.indexOf('## Monitoring and the status page'), readme.indexOf('## Pull limits'));
    for (const path of ['/metrics', '/healthz', '/readyz', '/debug/pulls', '/status', '/status.json']) expect(section).toContain(`\`${path}\``);
    expect(section).toMatch(/reachable from the node network/);
    expect(section).toMatch(/no credential,\s+token or credential hash/);
    const image = /!\[[^\]]+\]\((docs\/[\w-]+\.png)\)/.exec(section)?.[1];
    expect(image).toBe('docs/status-page.png');
    // A PNG signature, not a placeholder.
    expect(readFileSync(join(root, image as string)).subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  });
});
