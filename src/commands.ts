import type { Config } from './config/load.js';
import { createLogger } from './log.js';
import type { PullRecord } from './db/pull-records.js';
import { parseImageReference } from './oci/reference.js';
import { openStore } from './lifecycle/open-store.js';
import { storeHolder } from './store/lock.js';
import { Evictor } from './lifecycle/eviction.js';
import { verifyStore } from './lifecycle/integrity.js';
import { storeStatus, type StatusReport, type StoreStatus } from './cache/status.js';
import { repositoryIsOpen } from './policy/verifier.js';
import { formatBytes, formatDuration } from './server/status-page.js';

// Every command loads only what it uses: preload's archive reader and progress bar and check's HTTP client are
// imported by their commands, so `records`, `verify` and `gc` start without them (module loading was most of their
// cost on a small store).

/** `registry-cache preload SOURCE [--name REF]`: imports an image as pre-pulled; prints what it imported. */
export async function runPreload(config: Config, source: string, name: string | undefined): Promise<void> {
  const [{ SingleBar }, { preloadImage, resolvePreloadName }] = await Promise.all([import('cli-progress'), import('./preload/preload.js')]);
  // Checked before the store is opened: a name the server cannot serve imports nothing.
  const resolved = name === undefined ? undefined : resolvePreloadName(name, new Set(config.registries.keys()), config.defaultRegistry);
  if (resolved?.note) process.stderr.write(`registry-cache: ${resolved.note}\n`);
  const log = createLogger('warn');
  const opened = await openStore(config, log);
  const bar = process.stderr.isTTY ? new SingleBar({ format: 'preload [{bar}] {percentage}% | {value}/{total} bytes', hideCursor: true, stream: process.stderr }) : undefined;
  let started = false;
  try {
    const result = await preloadImage(source, resolved?.image, opened, (done, total) => {
      if (!bar) return;
      if (!started) {
        bar.start(total, 0);
        started = true;
      }
      bar.update(Math.min(done, total));
    });
    bar?.stop();
    for (const img of result.images) process.stdout.write(`preloaded ${img.name ?? '(unnamed)'} ${img.digest} ${img.mediaType}\n`);
    process.stdout.write(`${result.blobs} blobs, ${result.bytes} bytes read\n`);
  } finally {
    bar?.stop();
    await opened.close();
  }
}

/** Lines of `records` output per write. */
const RECORDS_PER_WRITE = 1_000;

/** `registry-cache records [--image REF] [--json]`: the pull records, never a secret (hash prefixes only). */
export async function runRecords(config: Config, image: string | undefined, json: boolean): Promise<void> {
  const opened = await openStore(config, createLogger('warn'), { readOnly: true });
  try {
    let rows = opened.records.list();
    if (image) {
      const ref = parseImageReference(image);
      rows = rows.filter((r) => r.registry === ref.registry && r.repository === ref.repository && (!ref.digest || r.digest === ref.digest));
    }
    if (json) {
      process.stdout.write(`${JSON.stringify(rows.map((r) => summarize(r)), null, 2)}\n`);
      return;
    }
    writeRecordsTable(rows);
  } finally {
    await opened.close();
  }
}

/** The `records` table: a cell string per record and column, no object or array per record (100k records: the views and rows of the earlier code were ~0.5 of its 1.2 CPU s, much of it garbage collection). */
function writeRecordsTable(rows: readonly PullRecord[]): void {
  const header = ['IMAGE', 'DIGEST', 'PULLED BY', 'PRELOADED', 'LAST VERIFIED'];
  const widths = header.map((h) => h.length);
  const images: string[] = [];
  const pulled: string[] = [];
  const verified: string[] = [];
  // Records come sorted by image, and many share a verification time: their strings are made once.
  let image = '';
  let registry: string | undefined;
  let repository: string | undefined;
  let at: number | null | undefined;
  let iso = '-';
  for (const r of rows) {
    if (r.registry !== registry || r.repository !== repository) {
      ({ registry, repository } = r);
      image = imageOf(r);
      widths[0] = Math.max(widths[0] ?? 0, image.length);
    }
    if (r.lastVerified !== at) {
      at = r.lastVerified;
      iso = isoOrNull(at) ?? '-';
      widths[4] = Math.max(widths[4] ?? 0, iso.length);
    }
    const by = pulledByOf(r);
    widths[1] = Math.max(widths[1] ?? 0, Math.min(19, r.digest.length));
    widths[2] = Math.max(widths[2] ?? 0, by.length);
    widths[3] = Math.max(widths[3] ?? 0, r.preloaded ? 3 : 2);
    images.push(image);
    pulled.push(by);
    verified.push(iso);
  }
  const [w0 = 0, w1 = 0, w2 = 0, w3 = 0] = widths;
  // The last column is not padded (lines carry no trailing spaces).
  const line = (cells: readonly [string, string, string, string, string]): string =>
    `${cells[0].padEnd(w0)}  ${cells[1].padEnd(w1)}  ${cells[2].padEnd(w2)}  ${cells[3].padEnd(w3)}  ${cells[4]}`;
  // Written in chunks of lines, not a write per line (95k lines: 95k system calls).
  let chunk: string[] = [line(header as [string, string, string, string, string])];
  for (const [i, r] of rows.entries()) {
    chunk.push(line([images[i] ?? '', r.digest.slice(0, 19), pulled[i] ?? '', r.preloaded ? 'yes' : 'no', verified[i] ?? '-']));
    if (chunk.length === RECORDS_PER_WRITE) {
      process.stdout.write(`${chunk.join('\n')}\n`);
      chunk = [];
    }
  }
  if (chunk.length > 0) process.stdout.write(`${chunk.join('\n')}\n`);
}

function imageOf(r: PullRecord): string {
  return r.registry ? `${r.registry}/${r.repository}` : '(unnamed)';
}

function isoOrNull(at: number | null): string | null {
  return at ? new Date(at).toISOString() : null;
}

/** Who a record says pulled the image: never a secret, only hash prefixes. */
function pulledByOf(r: PullRecord): string {
  if (r.nodePodsAccessible) return 'nodePodsAccessible';
  const n = r.credentialHashes.length;
  if (n > 0) return `${n} credential${n > 1 ? 's' : ''} (${r.credentialHashes.map((h) => h.slice(0, 8)).join(', ')}…)`;
  return r.preloaded ? '-' : 'nobody (verify next time)';
}

function summarize(r: PullRecord): { image: string; digest: string; pulledBy: string; credentialHashPrefixes: string[]; nodePodsAccessible: boolean; preloaded: boolean; lastVerified: string | null } {
  return {
    image: imageOf(r),
    digest: r.digest,
    pulledBy: pulledByOf(r),
    credentialHashPrefixes: r.credentialHashes.map((h) => h.slice(0, 8)),
    nodePodsAccessible: r.nodePodsAccessible,
    preloaded: r.preloaded,
    lastVerified: isoOrNull(r.lastVerified),
  };
}

/**
 * The real `gc` pass's SQLite page cache: deleting 10 % of a large store touches most index pages, which the default
 * 16 MB cache evicted and re-read (100k blobs: a ~110 MB database). Pages are allocated only as they are read.
 */
const GC_CACHE_BYTES = 256 * 1024 * 1024;

/**
 * How `gc` opens the store: a real pass alone with it (under its lock) with a large page cache; a dry run as a reader
 * with the default cache, since it may run next to a live server, in the same pod's memory, and reads each page once.
 */
export function gcOpenOptions(dryRun: boolean): { readOnly?: boolean; exclusive?: boolean; cacheBytes?: number } {
  return dryRun ? { readOnly: true } : { exclusive: true, cacheBytes: GC_CACHE_BYTES };
}

/** `registry-cache gc [--dry-run]`: one eviction pass by hand; prints what it freed (or would free) and how long the pass took. */
export async function runGc(config: Config, dryRun: boolean): Promise<void> {
  const log = createLogger('warn');
  // Eviction next to a live server could remove what it is serving: the server evicts on its own. A dry run only reads.
  await refuseNextToServer(
    config,
    !dryRun,
    'the running server evicts on its own (above imageGCHighThresholdPercent, checked every gcInterval and after each download); run `gc --dry-run` to see what it would evict, or stop the server to evict by hand',
  );
  const opened = await openStore(config, log, gcOpenOptions(dryRun));
  try {
    // Alone with the store (a real pass holds its lock): every row in one transaction, no batches for other work.
    const evictor = new Evictor({ store: opened.store, metadata: opened.metadata, settings: config.eviction, log, isBusy: () => false, removeBatchUnits: Number.POSITIVE_INFINITY });
    const started = performance.now();
    const result = await evictor.collect({ dryRun, names: true });
    const seconds = (performance.now() - started) / 1000;
    const verb = dryRun ? 'would evict' : 'evicted';
    for (const e of result.evicted) {
      const name = e.names?.join(', ') || 'unnamed';
      process.stdout.write(`${verb} ${name} (${e.root}) ${e.bytes} bytes (last used ${new Date(e.lastAccess).toISOString()})\n`);
    }
    process.stdout.write(
      `usage ${result.usedPercentBefore.toFixed(1)}%, ${result.bytesToFree} bytes to free; ${verb} ${result.evicted.length} images, ${result.freedBytes} bytes; ${result.skippedPinned} pinned kept; pass ${seconds.toFixed(3)} s\n`,
    );
  } finally {
    await opened.close();
  }
}

/** Throws, saying what to do instead, when `exclusive` and a live server holds the store. */
async function refuseNextToServer(config: Config, exclusive: boolean, instead: string): Promise<void> {
  if (!exclusive) return;
  const pid = await storeHolder(config.storage);
  if (pid !== undefined) throw new Error(`the store ${config.storage} is in use by registry-cache (pid ${pid}): ${instead}`);
}

/** `registry-cache verify [--repair]`: re-hashes the store; exit code 1 when problems remain. */
export async function runVerify(config: Config, repair: boolean): Promise<boolean> {
  await refuseNextToServer(config, repair, 'run `verify` without --repair next to it to see the problems, or stop the server to repair');
  const opened = await openStore(config, createLogger('warn'), repair ? { exclusive: true } : { readOnly: true });
  try {
    const report = await verifyStore(opened, repair);
    for (const p of report.problems) process.stdout.write(`${p.problem.padEnd(7)} ${p.digest} ${p.detail}${repair ? ' (removed)' : ''}\n`);
    process.stdout.write(`checked ${report.checked} files, ${report.bytes} bytes; ${report.problems.length} problems, ${report.repaired} repaired\n`);
    return report.problems.length === report.repaired;
  } finally {
    await opened.close();
  }
}

/** `registry-cache check`: one line per registry endpoint, reached through its configured path; false if any failed. */
export async function runCheck(config: Config): Promise<boolean> {
  const { checkRegistries } = await import('./upstream/check.js');
  const checks = await checkRegistries(config);
  for (const c of checks) process.stdout.write(`${c.ok ? 'ok  ' : 'FAIL'} ${c.registry} ${c.endpoint}: ${c.summary}\n`);
  return checks.every((c) => c.ok);
}

/** How long `status` waits for a running server's answer before it reads the store instead. */
const STATUS_TIMEOUT_MS = 3_000;

/** The operations listener's URL as a client on this host reaches it (a wildcard bind is reached on loopback). */
function opsUrlOf(listen: { host: string; port: number }): string {
  const host = listen.host === '0.0.0.0' ? '127.0.0.1' : listen.host === '::' ? '::1' : listen.host;
  return `http://${host.includes(':') ? `[${host}]` : host}:${listen.port}`;
}

/**
 * `registry-cache status [--json] [--url URL]`: the status page's summary in the terminal, from a running server's
 * `/status.json` (at `--url`, else `metricsListen`), or, when none answers, what the store alone tells.
 */
export async function runStatus(config: Config, options: { json: boolean; url?: string | undefined }): Promise<void> {
  const url = options.url ?? (config.metricsListen ? opsUrlOf(config.metricsListen) : undefined);
  let why = 'no metricsListen is configured (or pass --url)';
  if (url !== undefined) {
    try {
      const res = await fetch(`${url.replace(/\/$/, '')}/status.json`, { signal: AbortSignal.timeout(STATUS_TIMEOUT_MS) });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const report = (await res.json()) as StatusReport;
      process.stdout.write(options.json ? `${JSON.stringify({ source: url, ...report }, null, 2)}\n` : formatStatus(report, `live from ${url}`));
      return;
    } catch (err) {
      const cause = (err as Error & { cause?: { code?: string } }).cause?.code;
      why = `no server answered at ${url} (${cause ?? (err as Error).message})`;
    }
  }
  const opened = await openStore(config, createLogger('warn'), { readOnly: true });
  try {
    const evictor = new Evictor({ store: opened.store, metadata: opened.metadata, settings: config.eviction, log: createLogger('warn'), isBusy: () => false });
    const report = await storeStatus({
      config,
      metadata: opened.metadata,
      measure: () => evictor.measure(),
      isOpen: (registry, repository) => repositoryIsOpen(config.imagePullCredentialsVerificationPolicy, opened.records, registry, repository),
    });
    process.stdout.write(options.json ? `${JSON.stringify({ source: 'store', note: why, ...report }, null, 2)}\n` : formatStatus(report, `from the store: ${why}`));
  } finally {
    await opened.close();
  }
}

/** A text bar of `width` characters for `ratio` (0-1). */
function textBar(ratio: number, width = 20): string {
  const filled = Math.max(0, Math.min(width, Math.round(ratio * width)));
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`;
}

/** The status as terminal lines; a report from the store has no live figures (hits, pulls, errors). */
export function formatStatus(report: StoreStatus | StatusReport, source: string): string {
  const lines: string[] = [];
  const live = 'cache' in report ? report : undefined;
  lines.push(`registry-cache on ${report.node}, policy ${report.policy}${live ? `, up ${formatDuration(live.uptimeSeconds * 1000)}` : ''} (${source})`);
  if (live) {
    const c = live.cache;
    const ratio = c.hitRatio === null ? '-' : `${(c.hitRatio * 100).toFixed(1)}%`;
    lines.push(`hit ratio  ${ratio} (${c.hits} hits, ${c.misses} misses); saved ${formatBytes(c.bytesSaved)}, fetched ${formatBytes(c.bytesFetched)} from upstreams`);
  }
  const s = report.store;
  lines.push(
    `store      ${textBar(s.usedPercent / 100)} ${s.usedPercent.toFixed(1)}% of ${formatBytes(s.capacityBytes)} (${s.basis}); evicts above ${s.highPercent}% down to ${s.lowPercent}%; ${formatBytes(s.storedBytes)} of content`,
  );
  if (live) {
    const p = live.pulls;
    lines.push(`pulls      ${p.active.length} active${p.limit === null ? '' : ` of ${p.limit}`}, ${p.queued.length} queued`);
    for (const f of p.fills) {
      const progress = f.size === null ? `${formatBytes(f.bytes)} of ?` : `${textBar(f.size > 0 ? f.bytes / f.size : 1)} ${formatBytes(f.bytes)} of ${formatBytes(f.size)}`;
      lines.push(`  ${f.image} ${f.digest?.slice(0, 19) ?? ''} ${f.source} ${progress}, ${f.readers} waiting, ${formatDuration(f.elapsedMs)}`);
    }
    for (const q of p.queued) lines.push(`  queued ${q.images.join(', ')} for ${formatDuration(q.waitingForMs)}`);
  }
  lines.push(`images     ${report.images.length === 0 ? 'none stored' : 'most recently used:'}`);
  for (const i of report.images) {
    lines.push(`  ${i.names.join(', ') || '(unnamed)'}  ${formatBytes(i.sizeBytes)}${i.complete ? '' : ' (partial)'}  last used ${i.lastUsed.replace('T', ' ').slice(0, 19)} UTC`);
  }
  if (live) {
    lines.push(`upstream errors ${live.upstreamErrors.length === 0 ? 'none since start' : ''}`.trimEnd());
    for (const e of live.upstreamErrors.slice(0, 5)) lines.push(`  ${e.at.slice(11, 19)} ${e.registry} ${e.error}`);
    const outcomes = Object.entries(live.verification.outcomes).map(([k, v]) => `${k} ${v}`);
    lines.push(`verification ${outcomes.length > 0 ? outcomes.join(', ') : 'none since start'}`);
  }
  return `${lines.join('\n')}\n`;
}
