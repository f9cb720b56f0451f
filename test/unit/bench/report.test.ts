import { describe, expect, it } from 'vitest';
import { evaluateTargets, renderResults, type RunInfo } from '../../../bench/report.js';
import type { ScenarioResult } from '../../../bench/results.js';

const info: RunInfo = {
  command: 'npm run bench',
  startedAt: new Date('2026-11-29T03:20:00Z'),
  seconds: 600,
  machine: [],
  software: [],
  noise: [],
  settingsNote: 'full',
};

function scenario(number: string, id: string, loadAverage: number): ScenarioResult {
  return { id, number, title: id, method: '', columns: ['peer', 'registry-cache'], ratios: [], rows: [], notes: [], status: 'ok', seconds: 10, loadAverage };
}

describe('the bench report', () => {
  it('warns at the top when any scenario started at a 1-minute load average of 1.5 or more, and names it', () => {
    const busy = renderResults(info, [scenario('1', 'warm-blob', 0.4), scenario('2', 'manifests', 1.5)], [], 'results.svg');
    expect(busy).toMatch(/> \*\*Warning: the machine was busy\.\*\* 1 of 2 scenarios started at a 1-minute load average ≥ 1\.5 \(2 manifests: 1\.50\)/);
    expect(busy.indexOf('Warning: the machine was busy')).toBeLessThan(busy.indexOf('## Targets'));
    expect(busy).toContain('_Scenario time: 10 s; 1-minute load average at its start: 1.50 (**busy**)._');
    const quiet = renderResults(info, [scenario('1', 'warm-blob', 0.4), scenario('2', 'manifests', 1.49)], [], 'results.svg');
    expect(quiet).not.toContain('Warning');
    expect(quiet).toContain('_Scenario time: 10 s; 1-minute load average at its start: 0.40._');
  });

  it('lists every target of issue #14, measured or not', () => {
    const targets = evaluateTargets([]).filter((t) => t.source === '#14');
    const texts = targets.map((t) => t.target).join('\n');
    for (const needle of [
      /by digest ≥ 10×/,
      /by tag with `tagTtl: 0s` ≥ 2×/,
      /Cold 1 GiB blob, one client: ≥ 1\.0×/,
      /40 × 512 KiB image ≤ 1\.5×/,
      /Warm blob, one client: ≥ 0\.8× nginx/,
      /16 clients on 16 blobs: aggregate ≥ the peer/,
      /warm through the cache ≤ 1\.05× direct/,
      /cold through the cache ≤ 1\.15× direct/,
      /50 MiB\/s upstream: warm .* ≥ 5× faster/,
      /start-up ≤ 3 s/,
      /eviction pass .* ≤ 1 s/,
      /p99 ≤ 2× its value at 1,000/,
      /idle RSS ≤ 150 MB/,
      /exactly 1 upstream GET/,
      /Peak RSS ≤ 200 MB .*64 clients/,
      /crash and credential tests/,
    ]) {
      expect(texts).toMatch(needle);
    }
    expect(targets.every((t) => t.met === undefined)).toBe(true);
  });

  it('lists every target of issue #17 and judges the store-growth ones against 100k blobs', () => {
    const texts = evaluateTargets([]).filter((t) => t.source === '#17').map((t) => t.target).join('\n');
    for (const needle of [/fill rate .* ≥ 0\.8× the rate at 10k/, /≤ 1 s after a clean shutdown/, /≤ 3 s after a crash/, /`gc` freeing 10 % ≤ 2 s/, /`records` ≤ 1 s/, /`verify` ≥ 100 MB\/s/, /p99 within 1\.3×/]) {
      expect(texts).toMatch(needle);
    }
    const row = (id: string, at: Record<string, number>) => ({ id, label: id, unit: 's', better: 'lower' as const, digits: 2, samples: Object.fromEntries(Object.entries(at).map(([k, v]) => [k, [v]])) });
    const growth: ScenarioResult = {
      ...scenario('9', 'store-growth', 0.2),
      columns: ['1k blobs', '10k blobs', '100k blobs'],
      rows: [row('sg-fill-rate', { '10k blobs': 20, '100k blobs': 15 }), row('sg-records', { '100k blobs': 0.9 }), row('sg-hit-p99', { '1k blobs': 10, '100k blobs': 14 })],
    };
    const judged = new Map(evaluateTargets([growth]).filter((t) => t.scenario === '9').map((t) => [`${t.source} ${t.target}`, t]));
    expect(judged.get('#17 At 100,000 blobs: fill rate at the end ≥ 0.8× the rate at 10k')).toMatchObject({ met: false, ratio: '0.75×' });
    expect(judged.get('#17 At 100,000 blobs: `records` ≤ 1 s')?.met).toBe(true);
    expect(judged.get('#17 At 100,000 blobs: warm manifest hit p99 within 1.3× its value at 1k')?.met).toBe(false);
    expect(judged.get('#14 At 100,000 blobs: warm manifest hit p99 ≤ 2× its value at 1,000 blobs')?.met).toBe(true);
  });

  it("judges #14's eviction pass on the pass inside `gc` and #17's `gc` on the whole CLI process", () => {
    const row = (id: string, v: number) => ({ id, label: id, unit: 's', better: 'lower' as const, digits: 2, samples: { '100k blobs': [v] } });
    const growth: ScenarioResult = { ...scenario('9', 'store-growth', 0.2), columns: ['100k blobs'], rows: [row('sg-gc', 1.8), row('sg-gc-pass', 1.2)] };
    const judged = evaluateTargets([growth]).filter((t) => t.scenario === '9');
    const pass = judged.find((t) => t.source === '#14' && /eviction pass/.test(t.target));
    expect(pass?.target).toMatch(/the pass inside the `gc` process: list, row deletes and file removals; Node start-up and opening the store excluded/);
    expect(pass).toMatchObject({ met: false, measured: '1.20 s at 100k blobs' });
    const cli = judged.find((t) => t.source === '#17' && /`gc` freeing 10 %/.test(t.target));
    expect(cli?.target).toMatch(/as a CLI process, Node start-up included/);
    expect(cli).toMatchObject({ met: true, measured: '1.80 s at 100k blobs' });
  });
});
