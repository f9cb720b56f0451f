import { isAbsolute, join, relative } from 'node:path';
import type { Row, ScenarioResult, SystemName } from './results.js';
import { summarize, type Summary } from './stats.js';

/** Where and how a run happened, for the report's header. */
export interface RunInfo {
  command: string;
  startedAt: Date;
  seconds: number;
  machine: string[];
  software: string[];
  noise: string[];
  settingsNote: string;
}

/** How noisy the figures are; RESULTS.md says so in its header (the ±15 % comes from bench/README.md). */
export const NOISE_NOTE =
  'Servers, clients (curl, wrk, the Node clients of this harness) and anything else on the machine share 2 cores; figures move ±15 % between runs (see bench/README.md), so read ratios near a target as "about".';

/**
 * The command that produced a report, as someone with a checkout would type it: paths inside the repository relative
 * to it, an output directory outside it as `DIR` (a report names no path of the machine that wrote it).
 */
export function commandLine(argv: readonly string[], options: { repoRoot: string; viaNpm: boolean; script?: string }): string {
  const inRepo = (path: string): string => repositoryPath(path, options.repoRoot);
  const args = argv.map((a) => {
    if (isAbsolute(a)) return inRepo(a);
    const eq = /^(--[^=]+=)(\/.*)$/.exec(a);
    return eq ? `${eq[1]}${inRepo(eq[2] as string)}` : a;
  });
  const tail = args.length > 0 ? ` ${args.join(' ')}` : '';
  if (options.viaNpm) return `npm run bench${args.length > 0 ? ` --${tail}` : ''}`;
  return `node ${relative(options.repoRoot, options.script ?? join(options.repoRoot, 'bench/out/bench/run.js'))}${tail}`;
}

/** A scenario that starts at or above this 1-minute load average ran on a busy machine; RESULTS.md says so. */
export const BUSY_LOAD = 1.5;

/**
 * How a report names a path: relative to the repository when inside it, `node_modules/…` for a dependency (wherever
 * node_modules really is: here it may be a symlink to another checkout), else `DIR` (a path of the machine that wrote it).
 */
export function repositoryPath(path: string, repoRoot: string): string {
  const dependency = /(?:^|\/)(node_modules\/.*)$/.exec(path);
  if (dependency) return dependency[1] as string;
  const rel = relative(repoRoot, path);
  return rel === '' ? '.' : rel.startsWith('..') || isAbsolute(rel) ? 'DIR' : rel;
}

/** One target from the issue, judged from the measured medians. */
export interface TargetOutcome {
  target: string;
  /** The issue that set it: `#14`, or an earlier one kept because #14 did not replace it. */
  source: string;
  measured: string;
  ratio: string;
  /** undefined when the scenario did not run or produced no figure. */
  met: boolean | undefined;
  scenario: string;
}

function findRow(results: ScenarioResult[], id: string): Row | undefined {
  for (const r of results) {
    const row = r.rows.find((x) => x.id === id);
    if (row) return row;
  }
  return undefined;
}

function median(row: Row | undefined, system: SystemName): number {
  return summarize(row?.samples[system] ?? []).median;
}

function fmt(value: number, digits?: number): string {
  if (!Number.isFinite(value)) return '–';
  const d = digits ?? (Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : 2);
  return value.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
}

function ratioTarget(
  results: ScenarioResult[],
  target: string,
  scenario: string,
  rowId: string,
  num: SystemName,
  den: SystemName,
  ok: (ratio: number) => boolean,
  source = '#14',
): TargetOutcome {
  const row = findRow(results, rowId);
  const a = median(row, num);
  const b = median(row, den);
  const ratio = a / b;
  const unit = row?.unit ?? '';
  return {
    target,
    source,
    scenario,
    measured: `${num} ${fmt(a, row?.digits)} ${unit} vs ${den} ${fmt(b, row?.digits)} ${unit}`,
    ratio: Number.isFinite(ratio) ? `${fmt(ratio, 2)}×` : '–',
    met: Number.isFinite(ratio) ? ok(ratio) : undefined,
  };
}

/** A store-growth figure at 100k blobs against a bound, or against its own value at a smaller size (`against`). */
function growthTarget(
  results: ScenarioResult[],
  target: string,
  rowId: string,
  ok: (at100k: number, atSmaller: number) => boolean,
  against: '1k blobs' | '10k blobs' | undefined,
  source = '#14',
): TargetOutcome {
  const row = findRow(results, rowId);
  const at100k = median(row, '100k blobs');
  const atSmaller = against ? median(row, against) : Number.NaN;
  const smaller = against?.replace(' blobs', '');
  const measured = Number.isFinite(at100k)
    ? `${fmt(at100k, row?.digits)} ${row?.unit ?? ''} at 100k blobs${against ? `, ${fmt(atSmaller, row?.digits)} at ${smaller}` : ''}`
    : 'not run: scenario 9 (`--scenario store-growth`)';
  return {
    target,
    source,
    scenario: '9',
    measured,
    ratio: against && Number.isFinite(at100k / atSmaller) ? `${fmt(at100k / atSmaller, 2)}×` : '–',
    met: Number.isFinite(at100k) && (!against || Number.isFinite(atSmaller)) ? ok(at100k, atSmaller) : undefined,
  };
}

/** Judges every target of issue #14 (and the earlier ones it did not replace) from the results. */
export function evaluateTargets(results: ScenarioResult[]): TargetOutcome[] {
  const out: TargetOutcome[] = [
    ratioTarget(results, 'Warm manifests by digest ≥ 10× the peer’s requests/s', '2', 'manifest-digest-rps', 'registry-cache', 'peer', (r) => r >= 10),
    ratioTarget(results, 'Warm manifests by tag with `tagTtl: 0s` ≥ 2× the peer’s requests/s', '2', 'manifest-tag-ttl0-rps', 'registry-cache', 'peer', (r) => r >= 2),
    ratioTarget(results, 'Cold 1 GiB blob, one client: ≥ 1.0× the peer’s throughput', '3', 'cold-blob-mbps', 'registry-cache', 'peer', (r) => r >= 1),
    ratioTarget(results, 'Cold pull of the 40 × 512 KiB image ≤ 1.5× pulling directly from the upstream', '3', 'cold-pull-seconds', 'registry-cache', 'direct', (r) => r <= 1.5),
    ratioTarget(results, 'Warm blob, one client: ≥ 0.8× nginx', '1', 'warm-blob-mbps', 'registry-cache', 'nginx', (r) => r >= 0.8),
    ratioTarget(results, 'Warm blobs, 16 clients on 16 blobs: aggregate ≥ the peer’s', '1', 'warm-blob-parallel-mbps', 'registry-cache', 'peer', (r) => r >= 1),
    ratioTarget(results, '`ctr images pull` on loopback, warm through the cache ≤ 1.05× direct', '11', 'ctr-loopback-warm-seconds', 'registry-cache', 'direct', (r) => r <= 1.05),
    ratioTarget(results, '`ctr images pull` on loopback, cold through the cache ≤ 1.15× direct', '11', 'ctr-loopback-cold-seconds', 'registry-cache', 'direct', (r) => r <= 1.15),
    ratioTarget(results, '`ctr images pull` with a 50 MiB/s upstream: warm through the cache ≥ 5× faster than direct (direct / warm)', '11', 'ctr-throttled-warm-seconds', 'direct', 'registry-cache', (r) => r >= 5),
    growthTarget(results, 'At 100,000 blobs: start-up ≤ 3 s', 'sg-start-clean', (v) => v <= 3, undefined),
    growthTarget(
      results,
      'At 100,000 blobs: an eviction pass freeing 10 % ≤ 1 s (the pass inside the `gc` process: list, row deletes and file removals; Node start-up and opening the store excluded)',
      'sg-gc-pass',
      (v) => v <= 1,
      undefined,
    ),
    growthTarget(results, 'At 100,000 blobs: warm manifest hit p99 ≤ 2× its value at 1,000 blobs', 'sg-hit-p99', (v, at1k) => v <= 2 * at1k, '1k blobs'),
    growthTarget(results, 'At 100,000 blobs: idle RSS ≤ 150 MB', 'sg-rss', (v) => v <= 150, undefined),
    growthTarget(results, 'At 100,000 blobs: fill rate at the end ≥ 0.8× the rate at 10k', 'sg-fill-rate', (v, at10k) => v >= 0.8 * at10k, '10k blobs', '#17'),
    growthTarget(results, 'At 100,000 blobs: start-up ≤ 1 s after a clean shutdown', 'sg-start-clean', (v) => v <= 1, undefined, '#17'),
    growthTarget(results, 'At 100,000 blobs: start-up ≤ 3 s after a crash (SIGKILL)', 'sg-start-crash', (v) => v <= 3, undefined, '#17'),
    growthTarget(results, 'At 100,000 blobs: `gc` freeing 10 % ≤ 2 s (as a CLI process, Node start-up included)', 'sg-gc', (v) => v <= 2, undefined, '#17'),
    growthTarget(results, 'At 100,000 blobs: `records` ≤ 1 s', 'sg-records', (v) => v <= 1, undefined, '#17'),
    growthTarget(results, 'At 100,000 blobs: `verify` ≥ 100 MB/s on small files', 'sg-verify-mbps', (v) => v >= 100, undefined, '#17'),
    growthTarget(results, 'At 100,000 blobs: warm manifest hit p99 within 1.3× its value at 1k', 'sg-hit-p99', (v, at1k) => v <= 1.3 * at1k, '1k blobs', '#17'),
  ];
  const gets = findRow(results, 'herd-upstream-gets')?.samples['registry-cache'] ?? [];
  out.push({
    target: 'Herd: exactly 1 upstream GET',
    source: '#14',
    scenario: '4',
    measured: gets.length > 0 ? `registry-cache: ${gets.join(', ')} per repetition; peer: ${(findRow(results, 'herd-upstream-gets')?.samples.peer ?? []).join(', ')}` : '–',
    ratio: '–',
    met: gets.length > 0 ? gets.every((g) => g === 1) : undefined,
  });
  const herdRatio = findRow(results, 'herd-ratio');
  const hr = median(herdRatio, 'registry-cache');
  out.push({
    target: 'Herd: wall ≤ 1.5× a single client',
    source: 'earlier',
    scenario: '4',
    measured: `herd ${fmt(median(findRow(results, 'herd-wall'), 'registry-cache'), 0)} ms vs one client ${fmt(median(findRow(results, 'herd-single'), 'registry-cache'), 0)} ms`,
    ratio: Number.isFinite(hr) ? `${fmt(hr, 2)}×` : '–',
    met: Number.isFinite(hr) ? hr <= 1.5 : undefined,
  });
  const rss = findRow(results, 'rss-herd-sampled')?.samples['registry-cache'] ?? [];
  const hwm = findRow(results, 'rss-herd-hwm')?.samples['registry-cache'] ?? [];
  const peak = rss.length > 0 ? Math.max(...rss) : Number.NaN;
  out.push({
    target: 'Peak RSS ≤ 200 MB in the herd (64 clients)',
    source: '#14',
    scenario: '5',
    measured: rss.length > 0 ? `highest sampled VmRSS ${fmt(peak, 1)} MB (VmHWM ${fmt(Math.max(...hwm), 1)} MB)` : '–',
    ratio: Number.isFinite(peak) ? `${fmt(peak / 200, 2)}× the limit` : '–',
    met: Number.isFinite(peak) ? peak <= 200 && Math.max(...hwm) <= 200 : undefined,
  });
  out.push(...rolloutTargets(results));
  for (const [rowId, label, scenario] of [
    ['herd-bad-bodies', 'Herd: every body’s sha256 matches (0 bad)', '4'],
    ['load-errors', 'Load test: 0 errors', '7'],
  ] as const) {
    const row = findRow(results, rowId);
    const rc = row?.samples['registry-cache'] ?? [];
    const peer = row?.samples.peer ?? [];
    const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
    out.push({
      target: label,
      source: 'earlier',
      scenario,
      measured: row ? `registry-cache ${sum(rc)}, peer ${sum(peer)} (all repetitions)` : '–',
      ratio: '–',
      met: row ? sum(rc) === 0 : undefined,
    });
  }
  out.push(ratioTarget(results, 'Warm blob throughput ≥ 1.5× the peer (one client)', '1', 'warm-blob-mbps', 'registry-cache', 'peer', (r) => r >= 1.5, 'earlier'));
  out.push({
    target: 'The crash and credential tests green',
    source: '#14',
    scenario: '–',
    measured: 'the test suite (`CI=true npm test`), not this benchmark',
    ratio: '–',
    met: undefined,
  });
  return out;
}

/** The rollout's targets (#13), judged at the K values the run measured (1, 2, 4, 8 in a full run). */
function rolloutTargets(results: ScenarioResult[]): TargetOutcome[] {
  const upstream = results
    .flatMap((r) => r.rows)
    .map((row) => ({ row, k: Number(/^rollout-k(\d+)-upstream$/.exec(row.id)?.[1]) }))
    .filter((x) => Number.isInteger(x.k))
    .sort((a, b) => a.k - b.k);
  if (upstream.length === 0) {
    return ['Rollout, sharing: upstream bytes ≤ 1.1× the image at every K', 'Rollout, sharing: wall at K = 8 ≤ 1.3× K = 1', 'Rollout, no sharing: upstream bytes K× the image'].map((target) => ({
      target,
      source: '#13',
      scenario: '10',
      measured: '–',
      ratio: '–',
      met: undefined,
    }));
  }
  const worst = upstream.map(({ row, k }) => ({ k, value: Math.max(...(row.samples['rc sharing'] ?? [Number.NaN])) }));
  const first = upstream[0] as (typeof upstream)[number];
  const last = upstream[upstream.length - 1] as (typeof upstream)[number];
  const wallFirst = median(findRow(results, `rollout-k${first.k}-wall`), 'rc sharing');
  const wallLast = median(findRow(results, `rollout-k${last.k}-wall`), 'rc sharing');
  const wallRatio = wallLast / wallFirst;
  const offLast = median(last.row, 'rc no sharing');
  return [
    {
      target: 'Rollout, sharing: upstream bytes ≤ 1.1× the image at every K',
      source: '#13',
      scenario: '10',
      measured: `worst repetition: ${worst.map((w) => `K = ${w.k} ${fmt(w.value, 2)}×`).join(', ')}`,
      ratio: `${fmt(Math.max(...worst.map((w) => w.value)), 2)}×`,
      met: worst.every((w) => Number.isFinite(w.value)) ? worst.every((w) => w.value <= 1.1) : undefined,
    },
    {
      target: `Rollout, sharing: wall at K = ${last.k} ≤ 1.3× K = ${first.k}`,
      source: '#13',
      scenario: '10',
      measured: `K = ${last.k} ${fmt(wallLast, 0)} ms vs K = ${first.k} ${fmt(wallFirst, 0)} ms`,
      ratio: Number.isFinite(wallRatio) ? `${fmt(wallRatio, 2)}×` : '–',
      met: Number.isFinite(wallRatio) && last.k > first.k ? wallRatio <= 1.3 : undefined,
    },
    {
      target: `Rollout, no sharing: upstream bytes K× the image (the cost sharing removes)`,
      source: '#13',
      scenario: '10',
      measured: `K = ${last.k}: ${fmt(offLast, 2)}× the image`,
      ratio: Number.isFinite(offLast) ? `${fmt(offLast / last.k, 2)}× K` : '–',
      met: Number.isFinite(offLast) ? offLast >= 0.9 * last.k : undefined,
    },
  ];
}

function cell(s: Summary, digits: number | undefined): string {
  if (s.n === 0) return '–';
  if (s.n === 1 || s.min === s.max) return fmt(s.median, digits);
  return `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`;
}

function escapeCell(text: string): string {
  return text.replaceAll('|', '\\|');
}

/** The markdown table of one scenario: figure, one column per system, then the ratios of medians. */
export function scenarioTable(result: ScenarioResult): string {
  const head = ['figure', ...result.columns, ...result.ratios.map((r) => r.label)];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`];
  for (const row of result.rows) {
    const cells = [`${escapeCell(row.label)} (${row.unit})`];
    for (const col of result.columns) cells.push(cell(summarize(row.samples[col] ?? []), row.digits));
    for (const r of result.ratios) {
      const ratio = summarize(row.samples[r.numerator] ?? []).median / summarize(row.samples[r.denominator] ?? []).median;
      cells.push(Number.isFinite(ratio) && row.unit !== 'count' ? `${fmt(ratio, 2)}×` : '–');
    }
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

/** Renders RESULTS.md. */
export function renderResults(info: RunInfo, results: ScenarioResult[], extraSections: string[], svgName: string): string {
  const targets = evaluateTargets(results);
  const parts: string[] = [];
  parts.push('# registry-cache benchmark results');
  parts.push(
    `Generated by \`${info.command}\` on ${info.startedAt.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC')}; the run took ${Math.floor(info.seconds / 60)} min ${Math.round(info.seconds % 60)} s. ` +
      'Nothing here is asserted anywhere: these are measurements, regenerated by every run (see [README.md](README.md) for how to run and read them).',
  );
  parts.push(['**Machine**', ...info.machine.map((m) => `- ${m}`)].join('\n'));
  parts.push(['**Software**', ...info.software.map((m) => `- ${m}`)].join('\n'));
  const busy = results.filter((r) => r.loadAverage !== undefined && r.loadAverage >= BUSY_LOAD);
  if (busy.length > 0) {
    parts.push(
      `> **Warning: the machine was busy.** ${busy.length} of ${results.length} scenarios started at a 1-minute load average ≥ ${BUSY_LOAD} ` +
        `(${busy.map((r) => `${r.number} ${r.id}: ${fmt(r.loadAverage ?? Number.NaN, 2)}`).join(', ')}), so something else was using the 2 cores: ` +
        'these figures are not from a quiet machine, and ratios against the other systems may be off by far more than the usual ±15 %.',
    );
  }
  parts.push(['**Noise**', ...info.noise.map((m) => `- ${m}`)].join('\n'));
  parts.push(`**Settings**: ${info.settingsNote}`);
  parts.push(`Each cell is the median of the repetitions with (min–max); ratios are ratios of medians. Chart: [${svgName}](${svgName})\n\n![throughput and latency per system](${svgName})`);
  parts.push('## Targets');
  parts.push(
    [
      '| target | from | scenario | measured (registry-cache medians) | ratio | met |',
      '|---|---|---|---|---|---|',
      ...targets.map(
        (t) => `| ${escapeCell(t.target)} | ${t.source} | ${t.scenario} | ${escapeCell(t.measured)} | ${t.ratio} | ${t.met === undefined ? 'not measured' : t.met ? '**met**' : '**not met**'} |`,
      ),
    ].join('\n'),
  );
  for (const r of results) {
    parts.push(`## ${r.number}. ${r.title}`);
    if (r.status === 'skipped') {
      parts.push(`Skipped: ${r.message ?? ''}`);
      continue;
    }
    if (r.status === 'failed') parts.push(`**Failed** after ${r.seconds.toFixed(0)} s: ${r.message ?? ''}`);
    if (r.method) parts.push(r.method);
    if (r.rows.length > 0) parts.push(scenarioTable(r));
    if (r.notes.length > 0) parts.push(['Notes:', ...r.notes.map((n) => `- ${n}`)].join('\n'));
    const load = r.loadAverage === undefined ? '' : `; 1-minute load average at its start: ${fmt(r.loadAverage, 2)}${r.loadAverage >= BUSY_LOAD ? ' (**busy**)' : ''}`;
    parts.push(r.seconds > 0 ? `_Scenario time: ${r.seconds.toFixed(0)} s${load}._` : '_Measured during the scenario above._');
  }
  parts.push(...extraSections);
  return `${parts.join('\n\n')}\n`;
}

const COLORS: Partial<Record<SystemName, string>> = {
  peer: '#8c8c8c',
  'registry-cache': '#1f77b4',
  nginx: '#2ca02c',
  direct: '#ff7f0e',
};

interface Panel {
  title: string;
  unit: string;
  bars: Array<{ system: SystemName; label: string; summary: Summary }>;
}

function panelFor(results: ScenarioResult[], title: string, rowId: string, systems: Array<SystemName | [SystemName, string]>): Panel | undefined {
  const row = findRow(results, rowId);
  if (!row) return undefined;
  const bars = systems
    .map((s) => (Array.isArray(s) ? { system: s[0], label: s[1] } : { system: s, label: s }))
    .map((s) => ({ ...s, summary: summarize(row.samples[s.system] ?? []) }))
    .filter((b) => b.summary.n > 0);
  return bars.length > 0 ? { title, unit: row.unit, bars } : undefined;
}

function escapeXml(text: string): string {
  return text.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;').replaceAll('"', '&quot;');
}

function renderPanel(panel: Panel, x: number, y: number, width: number): { svg: string; height: number } {
  const labelWidth = 110;
  const valueWidth = 90;
  const barArea = width - labelWidth - valueWidth;
  const rowHeight = 22;
  const max = Math.max(...panel.bars.map((b) => b.summary.max), 1e-9);
  const out: string[] = [`<text x="${x}" y="${y + 14}" class="title">${escapeXml(`${panel.title} (${panel.unit})`)}</text>`];
  panel.bars.forEach((b, i) => {
    const top = y + 22 + i * rowHeight;
    const w = (b.summary.median / max) * barArea;
    const color = COLORS[b.system] ?? '#9467bd';
    out.push(`<text x="${x + labelWidth - 6}" y="${top + 14}" class="label" text-anchor="end">${escapeXml(b.label)}</text>`);
    out.push(`<rect x="${x + labelWidth}" y="${top + 3}" width="${Math.max(w, 1).toFixed(1)}" height="${rowHeight - 8}" fill="${color}"/>`);
    if (b.summary.n > 1) {
      const x1 = x + labelWidth + (b.summary.min / max) * barArea;
      const x2 = x + labelWidth + (b.summary.max / max) * barArea;
      const cy = top + rowHeight / 2 - 1;
      out.push(`<line x1="${x1.toFixed(1)}" y1="${cy}" x2="${x2.toFixed(1)}" y2="${cy}" class="whisker"/>`);
      out.push(`<line x1="${x1.toFixed(1)}" y1="${cy - 4}" x2="${x1.toFixed(1)}" y2="${cy + 4}" class="whisker"/>`);
      out.push(`<line x1="${x2.toFixed(1)}" y1="${cy - 4}" x2="${x2.toFixed(1)}" y2="${cy + 4}" class="whisker"/>`);
    }
    out.push(`<text x="${x + labelWidth + barArea + 6}" y="${top + 14}" class="value">${escapeXml(fmt(b.summary.median))}</text>`);
  });
  return { svg: out.join('\n'), height: 30 + panel.bars.length * rowHeight };
}

/** A hand-written SVG: throughput panels on the left, latency panels on the right; bars are medians, whiskers min–max. */
export function renderSvg(results: ScenarioResult[], subtitle: string): string {
  const left = [
    panelFor(results, 'Warm 1 GiB blob, one client', 'warm-blob-mbps', ['peer', 'registry-cache', 'nginx']),
    panelFor(results, 'Manifest by digest, 64 conns', 'manifest-digest-rps', ['peer', 'registry-cache']),
    panelFor(results, 'Manifest by tag, 64 conns', 'manifest-tag-rps', ['peer', ['registry-cache', 'rc (tagTtl 1m)']]),
    panelFor(results, 'Mixed load test', 'load-rps', ['peer', 'registry-cache']),
  ].filter((p): p is Panel => p !== undefined);
  const right = [
    panelFor(results, 'Manifest by digest p99', 'manifest-digest-p99', ['peer', 'registry-cache']),
    panelFor(results, 'Manifest by tag p99', 'manifest-tag-p99', ['peer', ['registry-cache', 'rc (tagTtl 1m)']]),
    panelFor(results, 'Mixed load test p99', 'load-p99', ['peer', 'registry-cache']),
    panelFor(results, 'Cold pull, 40 layers', 'cold-pull-seconds', ['direct', 'peer', 'registry-cache']),
    panelFor(results, 'Herd: 64 clients, cold blob', 'herd-wall', ['peer', 'registry-cache']),
    panelFor(results, 'Peak RSS during the herd', 'rss-herd-sampled', ['peer', 'registry-cache']),
  ].filter((p): p is Panel => p !== undefined);
  const width = 940;
  const colWidth = 440;
  const parts: string[] = [];
  let yl = 70;
  let yr = 70;
  for (const p of left) {
    const r = renderPanel(p, 20, yl, colWidth);
    parts.push(r.svg);
    yl += r.height + 14;
  }
  for (const p of right) {
    const r = renderPanel(p, 480, yr, colWidth);
    parts.push(r.svg);
    yr += r.height + 14;
  }
  const height = Math.max(yl, yr) + 10;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif">`,
    '<style>.title{font-size:13px;font-weight:bold}.label{font-size:12px}.value{font-size:12px}.head{font-size:16px;font-weight:bold}.sub{font-size:11px;fill:#555}.col{font-size:13px;fill:#333}.whisker{stroke:#000;stroke-width:1}</style>',
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    `<text x="20" y="24" class="head">registry-cache vs distribution proxy (peer): medians, whiskers min–max</text>`,
    `<text x="20" y="42" class="sub">${escapeXml(subtitle)}</text>`,
    '<text x="20" y="62" class="col">Throughput (higher is better)</text>',
    '<text x="480" y="62" class="col">Latency / time (lower is better)</text>',
    ...parts,
    '</svg>',
    '',
  ].join('\n');
}
