import { describe, expect, it } from 'vitest';
import { evaluateTargets } from '../../../bench/report.js';
import { RowSet, type ScenarioResult } from '../../../bench/results.js';

function rolloutResult(samples: Record<number, { upstream: [number[], number[]]; wall: number[] }>): ScenarioResult {
  const rows = new RowSet();
  for (const [k, s] of Object.entries(samples)) {
    for (const v of s.upstream[0]) rows.add(`rollout-k${k}-upstream`, { label: '', unit: '×', better: 'lower' }, 'rc sharing', v);
    for (const v of s.upstream[1]) rows.add(`rollout-k${k}-upstream`, { label: '', unit: '×', better: 'lower' }, 'rc no sharing', v);
    for (const v of s.wall) rows.add(`rollout-k${k}-wall`, { label: '', unit: 'ms', better: 'lower' }, 'rc sharing', v);
  }
  return { id: 'rollout', number: '10', title: '', method: '', columns: [], ratios: [], rows: rows.rows, notes: [], status: 'ok', seconds: 1 };
}

const rolloutTargets = (results: ScenarioResult[]) => evaluateTargets(results).filter((t) => t.scenario === '10');

describe('the rollout targets in RESULTS.md', () => {
  it('judge upstream bytes by the worst repetition at every K, wall at the largest K against the smallest, and the cost without sharing', () => {
    const targets = rolloutTargets([
      rolloutResult({
        1: { upstream: [[1.0, 1.0], [1.0, 1.0]], wall: [3000, 3400] },
        8: { upstream: [[1.02, 1.3], [8.01, 8.02]], wall: [3600, 4000] },
      }),
    ]);
    expect(targets.map((t) => [t.target, t.met])).toEqual([
      ['Rollout, sharing: upstream bytes ≤ 1.1× the image at every K', false],
      ['Rollout, sharing: wall at K = 8 ≤ 1.3× K = 1', true],
      ['Rollout, no sharing: upstream bytes K× the image (the cost sharing removes)', true],
    ]);
    expect(targets[0]?.measured).toBe('worst repetition: K = 1 1.00×, K = 8 1.30×');
    expect(targets[1]?.ratio).toBe('1.19×');
  });

  it('are "not measured" when the scenario did not run, and never met by a run of one K', () => {
    expect(rolloutTargets([]).map((t) => t.met)).toEqual([undefined, undefined, undefined]);
    const one = rolloutTargets([rolloutResult({ 1: { upstream: [[1.0], [1.0]], wall: [3000] } })]);
    expect(one[1]?.met).toBeUndefined();
  });
});
