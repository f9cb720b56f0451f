import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { CommandError, runCommand } from '../test/support/command.js';
import { missingTools } from '../test/support/tools.js';
import { setUp, type BenchContext } from './context.js';
import { profileMissedTargets } from './profiling.js';
import { BUSY_LOAD, NOISE_NOTE, commandLine, evaluateTargets, renderResults, renderSvg, repositoryPath, type RunInfo } from './report.js';
import type { ScenarioResult } from './results.js';
import type { Scenario } from './scenario.js';
import { coldPull } from './scenarios/cold-pull.js';
import { credentials } from './scenarios/credentials.js';
import { ctrPull } from './scenarios/ctr-pull.js';
import { herd } from './scenarios/herd.js';
import { load } from './scenarios/load.js';
import { manifests } from './scenarios/manifests.js';
import { pullLimit } from './scenarios/pull-limit.js';
import { rollout } from './scenarios/rollout.js';
import { settle } from './settle.js';
import { storeGrowth } from './scenarios/store-growth.js';
import { warmBlob } from './scenarios/warm-blob.js';
import { FULL, QUICK, formatBytes } from './settings.js';
import { CACHE_CLI, SkipScenario, currentCacheCli, useCacheCli } from './systems.js';
import { Teardown } from './teardown.js';

const storeGrowthScenario: Scenario = {
  id: 'store-growth',
  number: '9',
  aliases: ['growth', 'store-size'],
  title: 'Cost as the store grows (1k, 10k, 100k blobs)',
  // About 2 minutes on a quiet machine (100k included), so the full run measures it.
  inDefaultRun: true,
  run: () => Promise.reject(new Error('store-growth runs standalone')),
  standalone: storeGrowth,
};

const SCENARIOS: Scenario[] = [warmBlob, manifests, coldPull, herd, credentials, load, ctrPull, pullLimit, storeGrowthScenario, rollout];

const BENCH_DIR = resolve(import.meta.dirname, '..', '..');
const REPO_ROOT = resolve(BENCH_DIR, '..');

/** Tools each scenario runs, and the Debian packages that bring them. */
const TOOLS: Record<string, string[]> = {
  '*': ['docker-registry', 'curl'],
  'warm-blob': ['nginx'],
  manifests: ['wrk'],
  credentials: ['wrk', 'htpasswd'],
  'ctr-pull': ['containerd', 'ctr'],
};
const APT_LINE = 'apt-get install -y docker-registry nginx wrk apache2-utils curl containerd';

/** Hard ceilings on a whole run (a full run also waits for the load to settle before each scenario), so a wedged server can never keep the harness (and its daemons) alive. */
const RUN_DEADLINE_MS = { full: 60 * 60_000, quick: 6 * 60_000 };

const USAGE = `usage: npm run bench [-- [--quick] [--scenario NAME]... [--profile | --no-profile] [--out DIR]]

  --quick            tiny sizes and few repetitions: a smoke run of every scenario (< 2 minutes)
  --scenario NAME    run only this scenario (repeatable or comma-separated); names:
${SCENARIOS.map((s) => `                       ${s.number} ${s.id}${s.aliases.length ? ` (${s.aliases.join(', ')})` : ''}${s.inDefaultRun ? '' : ' [opt-in]'}`).join('\n')}
                       default = the scenarios of a plain run; all = every scenario, opt-in ones included
                       (a full run that includes every default scenario writes bench/RESULTS.md)
  --profile          also profile registry-cache (node --cpu-prof) for every target's scenario
  --no-profile       never profile (default: profile the scenarios whose target was missed, full runs only)
  --no-settle        start each scenario at once (default for full runs: wait up to 150 s for the 1-minute load
                     average to fall below 1.5, so one scenario's work does not count against the next)
  --cache-cli FILE   run this registry-cache CLI instead of dist/cli.js (to A/B a patched build)
  --out DIR          where RESULTS.md and results.svg go (default: bench/ for a full run of the default
                     scenarios, bench/out/ for --quick or --scenario runs, so smoke runs never overwrite results)
`;

function selectScenarios(names: string[]): Scenario[] {
  if (names.length === 0) return SCENARIOS.filter((s) => s.inDefaultRun);
  const wanted = names.flatMap((n) => n.split(',')).map((n) => n.trim().toLowerCase()).filter(Boolean);
  if (wanted.includes('all')) return SCENARIOS;
  const picked = new Set<Scenario>();
  for (const name of wanted) {
    if (name === 'default') {
      for (const s of SCENARIOS) if (s.inDefaultRun) picked.add(s);
      continue;
    }
    const s = SCENARIOS.find((x) => x.id === name || x.number === name || x.aliases.includes(name));
    if (!s) throw new Error(`unknown scenario "${name}"\n\n${USAGE}`);
    picked.add(s);
  }
  // Scenario 5 (memory) is measured during 4; keep the canonical order whatever the order of the flags.
  return SCENARIOS.filter((s) => picked.has(s));
}

async function toolVersion(file: string, args: string[], pattern: RegExp): Promise<string> {
  try {
    const r = await runCommand(file, args, { timeoutMs: 10_000 });
    const text = `${r.stdout.toString('utf8')}\n${r.stderr}`;
    return pattern.exec(text)?.[0]?.trim() ?? 'unknown';
  } catch (err) {
    // wrk -v prints its version and exits 1.
    const text = err instanceof CommandError ? `${err.stdout.toString('utf8')}\n${err.stderr}` : '';
    return pattern.exec(text)?.[0]?.trim() ?? 'unknown';
  }
}

async function machineInfo(): Promise<{ machine: string[]; software: string[] }> {
  const nproc = (await runCommand('nproc', [], { timeoutMs: 5_000 }).catch(() => undefined))?.stdout.toString('utf8').trim() ?? '?';
  const gitHead = (await runCommand('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO_ROOT, timeoutMs: 5_000 }).catch(() => undefined))?.stdout.toString('utf8').trim();
  const gitDirty = (await runCommand('git', ['status', '--porcelain', 'src'], { cwd: REPO_ROOT, timeoutMs: 5_000 }).catch(() => undefined))?.stdout.toString('utf8').trim();
  const cpu = cpus();
  return {
    machine: [
      `CPU: ${cpu.length} cores (\`nproc\`: ${nproc}), ${cpu[0]?.model.trim() ?? 'unknown model'}`,
      `Memory: ${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
      `Kernel: Linux ${release()}`,
      `Node: ${process.version}`,
      'Network: loopback only (every server listens on 127.0.0.1)',
    ],
    software: [
      currentCacheCli() === CACHE_CLI
        ? `registry-cache: dist/ built from commit ${gitHead ?? 'unknown'}${gitDirty ? ' with uncommitted changes in src/' : ''}`
        : `registry-cache: ${repositoryPath(currentCacheCli(), REPO_ROOT)} (--cache-cli, not dist/); tree at commit ${gitHead ?? 'unknown'}`,
      `docker-registry: ${await toolVersion('docker-registry', ['--version'], /\d+\.\d+\.\d+\S*/)} (Debian; upstream and peer)`,
      `nginx: ${await toolVersion('nginx', ['-v'], /nginx\/\S+/)}`,
      `wrk: ${await toolVersion('wrk', ['-v'], /wrk \S+/)}`,
      `curl: ${await toolVersion('curl', ['--version'], /curl \S+/)}`,
    ],
  };
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      scenario: { type: 'string', multiple: true, default: [] },
      profile: { type: 'boolean', default: false },
      'no-profile': { type: 'boolean', default: false },
      'no-settle': { type: 'boolean', default: false },
      out: { type: 'string' },
      'cache-cli': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const settings = values.quick ? QUICK : FULL;
  const selected = selectScenarios(values.scenario);
  // The committed results come from a full run of at least every default scenario (opt-in ones may join it).
  const isCanonical = !values.quick && SCENARIOS.every((s) => !s.inDefaultRun || selected.includes(s));
  const outDir = resolve(values.out ?? (isCanonical ? BENCH_DIR : join(BENCH_DIR, 'out')));
  // A closed pipe on stderr (`… | head`) must not kill the run before it has stopped its servers.
  process.stderr.on('error', () => undefined);
  const log = (line: string): void => {
    process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}\n`);
  };

  // Standalone scenarios start their own servers: without any other, no shared setup and no tools are needed.
  const needsContext = selected.some((s) => !s.standalone);
  const needed = new Set(needsContext ? [...TOOLS['*']!, ...selected.flatMap((s) => TOOLS[s.id] ?? [])] : []);
  const missing = missingTools([...needed]);
  if (missing.length > 0) {
    log(`missing tools: ${missing.join(', ')}; install them with: ${APT_LINE}`);
    return 1;
  }
  if (values['cache-cli'] !== undefined) useCacheCli(values['cache-cli']);
  if (!existsSync(currentCacheCli())) {
    log(`${currentCacheCli()} does not exist: run \`npm run build\` first (npm run bench does)`);
    return 1;
  }
  // registry-cache reads REGISTRY_CACHE_* over its config file and refuses unknown ones: a stray variable would skew or stop it.
  for (const name of Object.keys(process.env)) if (name.startsWith('REGISTRY_CACHE_')) delete process.env[name];

  const teardown = new Teardown();
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) {
      log(`${signal} again: exiting now`);
      process.exit(130);
    }
    interrupted = true;
    log(`${signal}: stopping every server and deleting temp files (again to exit at once)`);
    // The main flow sees its servers go, stops at the next step and returns through its own teardown; this is the backstop.
    void teardown.runAll(log);
    setTimeout(() => process.exit(130), 20_000).unref();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const watchdog = setTimeout(() => {
    log(`the run exceeded ${RUN_DEADLINE_MS[settings.mode] / 60_000} minutes; stopping`);
    void teardown.runAll(log).finally(() => process.exit(1));
  }, RUN_DEADLINE_MS[settings.mode]);
  watchdog.unref();

  const started = new Date();
  const startedHr = process.hrtime.bigint();
  const results: ScenarioResult[] = [];
  const loads: string[] = [`start ${loadavg()[0]?.toFixed(2)}`];
  let ctx: BenchContext | undefined;
  let failed = false;
  const extraSections: string[] = [];
  try {
    log(`${settings.mode} run: ${selected.map((s) => s.id).join(', ')}`);
    const needs = { pullLimit: selected.includes(pullLimit), rollout: selected.includes(rollout), parallelBlobs: selected.includes(warmBlob), ctrImage: selected.includes(ctrPull) };
    if (needsContext) ctx = await setUp(settings, needs, teardown, [], log);
    for (const scenario of selected) {
      if (interrupted) break;
      log(`scenario ${scenario.number} ${scenario.id}`);
      // The previous scenario's own work lingers in the 1-minute load average (it decays with a 1-minute time constant):
      // without this wait every scenario after the first is flagged busy by the bench itself.
      const settles = settings.mode === 'full' && !values['no-settle'];
      const settleLoad = (): Promise<number> => settle({ log, stop: () => interrupted });
      if (settles) await settleLoad();
      const loadAverage = loadavg()[0] ?? Number.NaN;
      loads.push(`${scenario.number}: ${loadAverage.toFixed(2)}`);
      if (loadAverage >= BUSY_LOAD) log(`  the machine is busy: 1-minute load average ${loadAverage.toFixed(2)} (RESULTS.md will say so)`);
      const t0 = process.hrtime.bigint();
      const seconds = (): number => Number(process.hrtime.bigint() - t0) / 1e9;
      const base = { id: scenario.id, number: scenario.number, title: scenario.title, loadAverage };
      try {
        const out = scenario.standalone ? await scenario.standalone({ teardown, log, ...(settles ? { settle: settleLoad } : {}) }) : await scenario.run(ctx as BenchContext);
        const { sections, ...main } = out;
        results.push({ ...base, ...main, status: 'ok', seconds: seconds() });
        for (const s of sections ?? []) results.push({ ...s, status: 'ok', seconds: 0 });
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        const skipped = err instanceof SkipScenario;
        if (!skipped) failed = true;
        log(`scenario ${scenario.id} ${skipped ? 'skipped' : 'FAILED'}: ${message}`);
        results.push({ ...base, method: '', columns: [], ratios: [], rows: [], notes: [], status: skipped ? 'skipped' : 'failed', message, seconds: seconds() });
      }
      log(`  (${seconds().toFixed(0)} s)`);
    }
    const targets = evaluateTargets(results);
    const wantProfile = ctx !== undefined && (!interrupted && values.profile || (settings.mode === 'full' && !values['no-profile'] && targets.some((t) => t.met === false)));
    if (wantProfile) {
      const profileDir = join(BENCH_DIR, 'out', 'profiles');
      try {
        const sections = await profileMissedTargets(ctx as BenchContext, targets, profileDir, values.profile);
        if (sections.length > 0) {
          extraSections.push(
            '## CPU profiles of registry-cache',
            `Generated by this run: for each scenario with a missed target (or every one with \`--profile\`), a short registry-cache-only rerun under \`node --cpu-prof\`; the .cpuprofile files are in \`${relative(REPO_ROOT, profileDir)}/\` (open them in Chrome DevTools or summarize with \`node bench/out/bench/cpu-profile.js DIR\`). Self time = samples whose top frame is that function; "idle" is time the event loop waited.`,
            ...sections,
          );
        }
      } catch (err) {
        log(`profiling failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  } catch (err) {
    failed = true;
    log(`setup failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  } finally {
    loads.push(`end ${loadavg()[0]?.toFixed(2)}`);
    log('stopping every server and deleting temp files');
    await teardown.runAll(log);
    clearTimeout(watchdog);
  }
  if (interrupted) return 130;

  if (results.length > 0) {
    const findingsFile = join(BENCH_DIR, 'FINDINGS.md');
    if (isCanonical && existsSync(findingsFile)) extraSections.unshift((await readFile(findingsFile, 'utf8')).trim());
    const { machine, software } = await machineInfo();
    const seconds = Number(process.hrtime.bigint() - startedHr) / 1e9;
    const info: RunInfo = {
      command: commandLine(argv, { repoRoot: REPO_ROOT, viaNpm: process.env.npm_lifecycle_event === 'bench', ...(process.argv[1] ? { script: process.argv[1] } : {}) }),
      startedAt: started,
      seconds,
      machine,
      software,
      noise: [
        `1-minute load average at the start of each scenario: ${loads.join(', ')}.`,
        NOISE_NOTE,
      ],
      settingsNote: `${settings.mode} — images ${formatBytes(settings.sizes.small)}, ${formatBytes(settings.sizes.medium)}, ${formatBytes(settings.sizes.herd)}, ${formatBytes(settings.sizes.warm)} single-layer, ${settings.sizes.manyLayers} × ${formatBytes(settings.sizes.manyLayer)} layers, a 2-platform index, ${settings.warmBlob.clients} × ${formatBytes(settings.warmBlob.parallelBlob)} layers (warm blob, concurrent clients), a ${settings.ctrPull.layers.length}-layer image for ctr; repetitions: warm blob ${settings.warmBlob.reps}, manifests ${settings.manifests.reps} × ${settings.manifests.durationSeconds} s, cold pull ${settings.coldPull.reps}, herd ${settings.herd.reps}, credentials ${settings.credentials.reps}, load ${settings.load.reps} × ${settings.load.requests} requests, ctr pull ${settings.ctrPull.reps}, rollout ${settings.rollout.reps} × K = ${settings.rollout.nodes.join('/')} (${settings.rollout.layers} × ${formatBytes(settings.rollout.layer)} at ${formatBytes(settings.rollout.bandwidth)}/s).`,
    };
    await mkdir(outDir, { recursive: true });
    const svgName = 'results.svg';
    await writeFile(join(outDir, 'RESULTS.md'), renderResults(info, results, extraSections, svgName));
    await writeFile(join(outDir, svgName), renderSvg(results, `${settings.mode} run, ${started.toISOString().slice(0, 10)}, ${cpus().length} cores, Node ${process.version}`));
    // Every sample, for anyone who wants other statistics than the report's; bench/out/ is not committed.
    await mkdir(join(BENCH_DIR, 'out'), { recursive: true });
    await writeFile(join(BENCH_DIR, 'out', 'last-run.json'), JSON.stringify({ info, settings, results }, null, 2));
    log(`wrote ${relative(REPO_ROOT, join(outDir, 'RESULTS.md'))} and ${relative(REPO_ROOT, join(outDir, svgName))} (samples: bench/out/last-run.json)`);
    for (const t of evaluateTargets(results)) log(`  ${t.met === undefined ? 'n/a    ' : t.met ? 'met    ' : 'NOT MET'} ${t.target}: ${t.ratio} (${t.measured})`);
  }
  return failed ? 1 : 0;
}

process.exit(await main());
