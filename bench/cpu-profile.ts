import { existsSync, readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { SourceMap, type SourceMapPayload } from 'node:module';
import { join, resolve } from 'node:path';
import { repositoryPath } from './report.js';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  hitCount?: number;
  positionTicks?: Array<{ line: number; ticks: number }>;
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
}

/** One hot spot: a function or a source line, with its share of all samples. */
export interface HotSpot {
  where: string;
  functionName: string;
  ticks: number;
  share: number;
}

/** Self time of a set of .cpuprofile files, by category, by function and by registry-cache source line. */
export interface ProfileSummary {
  files: number;
  totalTicks: number;
  seconds: number;
  categories: Array<{ category: string; share: number }>;
  topFunctions: HotSpot[];
  topSourceLines: HotSpot[];
}

const REPO_ROOT = resolve(import.meta.dirname, '..', '..', '..');

const maps = new Map<string, SourceMap | undefined>();

function sourceMapFor(url: string): SourceMap | undefined {
  if (maps.has(url)) return maps.get(url);
  let map: SourceMap | undefined;
  try {
    const file = fileURLToPath(url);
    if (existsSync(`${file}.map`)) map = new SourceMap(JSON.parse(readFileSync(`${file}.map`, 'utf8')) as SourceMapPayload);
  } catch {
    map = undefined;
  }
  maps.set(url, map);
  return map;
}

/** Maps a 0-based position in a compiled dist/ file to `src/…ts:line` through its source map. */
function original(url: string, line0: number, column0: number): string | undefined {
  const map = sourceMapFor(url);
  if (!map) return undefined;
  const entry = map.findEntry(line0, column0) as { originalSource?: string; originalLine?: number; generatedLine?: number };
  if (!entry.originalSource || entry.originalLine === undefined) return undefined;
  const sourcePath = entry.originalSource.startsWith('file://')
    ? fileURLToPath(entry.originalSource)
    : resolve(fileURLToPath(new URL('.', url)), entry.originalSource);
  return `${repositoryPath(sourcePath, REPO_ROOT)}:${entry.originalLine + 1}`;
}

function category(frame: CallFrame): string {
  const url = frame.url;
  if (url === '') {
    if (frame.functionName === '(garbage collector)') return 'garbage collector';
    if (frame.functionName === '(idle)') return 'idle (waiting for I/O)';
    if (frame.functionName === '(program)') return 'V8/native (program)';
    return 'native (C++ builtins, syscalls)';
  }
  if (url.startsWith('node:')) return 'Node.js internals (node:*)';
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (m) return `dependency ${m[1]}`;
  if (url.includes('/dist/')) return 'registry-cache (dist/)';
  return 'other';
}

function location(frame: CallFrame): string {
  if (frame.url === '') return frame.functionName;
  if (frame.url.includes('/dist/')) {
    const mapped = original(frame.url, frame.lineNumber, frame.columnNumber);
    if (mapped) return mapped;
  }
  const short = frame.url.startsWith('file://') ? repositoryPath(fileURLToPath(frame.url), REPO_ROOT) : frame.url;
  return `${short}:${frame.lineNumber + 1}`;
}

/** Reads every .cpuprofile in `dir` and sums self time (samples) by category, function and source line. */
export async function summarizeProfiles(dir: string, top = 12): Promise<ProfileSummary> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.cpuprofile'));
  const byCategory = new Map<string, number>();
  const byFunction = new Map<string, HotSpot>();
  const byLine = new Map<string, HotSpot>();
  let totalTicks = 0;
  let micros = 0;
  for (const f of files) {
    const profile = JSON.parse(await readFile(join(dir, f), 'utf8')) as CpuProfile;
    micros += profile.endTime - profile.startTime;
    for (const node of profile.nodes) {
      const ticks = node.hitCount ?? 0;
      if (ticks === 0) continue;
      totalTicks += ticks;
      const cat = category(node.callFrame);
      byCategory.set(cat, (byCategory.get(cat) ?? 0) + ticks);
      const where = location(node.callFrame);
      const fn = node.callFrame.functionName || '(anonymous)';
      const key = `${fn} ${where}`;
      const spot = byFunction.get(key) ?? { where, functionName: fn, ticks: 0, share: 0 };
      spot.ticks += ticks;
      byFunction.set(key, spot);
      if (node.callFrame.url.includes('/dist/') && !node.callFrame.url.includes('/node_modules/')) {
        for (const pt of node.positionTicks ?? []) {
          // positionTicks lines are 1-based; a column far right finds the line's last mapping.
          const line = original(node.callFrame.url, pt.line - 1, 10_000);
          if (line === undefined || !line.startsWith('src/')) continue;
          const l = byLine.get(line) ?? { where: line, functionName: fn, ticks: 0, share: 0 };
          l.ticks += pt.ticks;
          byLine.set(line, l);
        }
      }
    }
  }
  const withShare = (spots: Iterable<HotSpot>): HotSpot[] =>
    [...spots]
      .map((s) => ({ ...s, share: totalTicks > 0 ? s.ticks / totalTicks : 0 }))
      .sort((a, b) => b.ticks - a.ticks)
      .slice(0, top);
  return {
    files: files.length,
    totalTicks,
    seconds: micros / 1e6,
    categories: [...byCategory.entries()]
      .map(([c, t]) => ({ category: c, share: totalTicks > 0 ? t / totalTicks : 0 }))
      .sort((a, b) => b.share - a.share),
    topFunctions: withShare(byFunction.values()),
    topSourceLines: withShare(byLine.values()),
  };
}

function pct(x: number): string {
  return `${(x * 100).toFixed(1)} %`;
}

/** Markdown for one profile summary. */
export function renderProfileSummary(title: string, s: ProfileSummary): string {
  const lines = [
    `### ${title}`,
    `${s.files} profile file(s), ${s.totalTicks} samples over ${s.seconds.toFixed(1)} s of registry-cache process time.`,
    '',
    `Self time by category: ${s.categories
      .filter((c) => c.share >= 0.005)
      .map((c) => `${c.category} ${pct(c.share)}`)
      .join('; ')}; everything else < 0.5 % each.`,
    '',
    '| self time | function | where |',
    '|---:|---|---|',
    ...s.topFunctions.map((f) => `| ${pct(f.share)} | \`${f.functionName}\` | ${f.where} |`),
  ];
  if (s.topSourceLines.length > 0) {
    lines.push('', 'Hottest registry-cache source lines (self time, via dist/ source maps):', '', '| self time | line | function |', '|---:|---|---|');
    lines.push(...s.topSourceLines.map((l) => `| ${pct(l.share)} | ${l.where} | \`${l.functionName}\` |`));
  }
  return lines.join('\n');
}

/** `node bench/out/bench/cpu-profile.js DIR`: prints the summary of the profiles in DIR. */
if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const dir = process.argv[2];
  if (dir === undefined) {
    process.stderr.write('usage: node bench/out/bench/cpu-profile.js DIR_WITH_CPUPROFILES\n');
    process.exit(2);
  }
  process.stdout.write(`${renderProfileSummary(dir, await summarizeProfiles(dir, 20))}\n`);
}
