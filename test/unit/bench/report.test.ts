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
});
