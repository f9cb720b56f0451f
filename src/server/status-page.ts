import { createHash } from 'node:crypto';
import type { StatusReport } from '../cache/status.js';

/** Seconds between two refreshes of the page. */
export const REFRESH_SECONDS = 2;

const STYLE = `
:root{--fg:#1d2330;--muted:#5d6778;--line:#dde2ea;--bg:#f6f7f9;--card:#fff;--accent:#2f6fdf;--ok:#2e8b57;--warn:#c77700;--bad:#c0392b}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1180px;margin:0 auto;padding:18px 20px 40px}
header{display:flex;align-items:baseline;gap:14px;flex-wrap:wrap;margin-bottom:14px}h1{font-size:20px;margin:0}header .meta{color:var(--muted)}
h2{font-size:14px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);margin:0 0 8px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px;margin-bottom:14px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px;background:none;border:0;padding:0}
.tile{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}.tile b{display:block;font-size:24px;font-variant-numeric:tabular-nums}.tile span{color:var(--muted)}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:middle}th{color:var(--muted);font-weight:600}
td.num,th.num{text-align:right}code{font-size:12px;color:var(--muted)}.empty{color:var(--muted);margin:0}
progress{width:220px;height:14px;vertical-align:middle;accent-color:var(--accent)}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;background:#e8eefb;color:var(--accent)}.badge.peer{background:#e7f5ec;color:var(--ok)}
.bar{position:relative;height:22px;border-radius:5px;background:#e9edf3;overflow:visible;margin:10px 0 26px}
.bar .used{height:100%;border-radius:5px;background:var(--ok)}.bar .used.high{background:var(--bad)}.bar .used.low{background:var(--warn)}
.mark{position:absolute;top:-4px;bottom:-4px;border-left:2px dashed var(--fg)}.mark span{position:absolute;top:28px;font-size:12px;color:var(--muted);white-space:nowrap}.mark.low span{right:4px}.mark.high span{left:4px}
.err{color:var(--bad)}
`;

// Swaps the page's <main> for a fresh server rendering: no client-side templates, same origin only.
const SCRIPT = `setInterval(async()=>{try{const r=await fetch(location.pathname,{cache:'no-store'});if(!r.ok)return;` +
  `const m=new DOMParser().parseFromString(await r.text(),'text/html').querySelector('main');` +
  `if(m)document.querySelector('main').replaceWith(m)}catch{}},${REFRESH_SECONDS * 1000});`;

const hash = (text: string): string => `'sha256-${createHash('sha256').update(text).digest('base64')}'`;

/**
 * The page's Content-Security-Policy: only its own inline script (by hash), inline styles (bar widths are style
 * attributes), requests only to its own origin. Nothing is fetched from elsewhere, and a name that slipped past
 * escaping could not run script.
 */
export const STATUS_PAGE_CSP = `default-src 'none'; style-src 'unsafe-inline'; script-src ${hash(SCRIPT)}; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`;

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const esc = (value: unknown): string => String(value).replace(/[&<>"']/g, (c) => ESCAPES[c] ?? c);

/** Bytes in binary units, e.g. `12.3 MiB`. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let i = 0;
  while (Math.abs(value) >= 1024 && i < units.length - 1) {
    value /= 1024;
    i++;
  }
  return i === 0 ? `${value} B` : `${value.toFixed(1)} ${units[i]}`;
}

/** A duration in the largest two units, e.g. `3m 12s`. */
export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

const percent = (ratio: number | null): string => (ratio === null ? '–' : `${(ratio * 100).toFixed(1)}%`);
const table = (head: string[], rows: string[][], numeric: number[] = []): string =>
  `<table><thead><tr>${head.map((h, i) => `<th${numeric.includes(i) ? ' class="num"' : ''}>${h}</th>`).join('')}</tr></thead><tbody>${rows
    .map((r) => `<tr>${r.map((c, i) => `<td${numeric.includes(i) ? ' class="num"' : ''}>${c}</td>`).join('')}</tr>`)
    .join('')}</tbody></table>`;
const shortDigest = (digest: string | null): string => (digest ? `<code>${esc(digest.slice(0, 19))}…</code>` : '');

function pullsSection(r: StatusReport): string {
  const fills = r.pulls.fills.map((f) => {
    const progress = f.size === null ? '<progress></progress>' : `<progress value="${f.bytes}" max="${f.size}"></progress>`;
    return [
      `${esc(f.image)}<br>${shortDigest(f.digest)}`,
      `<span class="badge ${esc(f.source)}">${esc(f.source)}</span>`,
      progress,
      `${esc(formatBytes(f.bytes))} / ${f.size === null ? '?' : `${esc(formatBytes(f.size))} (${f.size > 0 ? Math.floor((f.bytes / f.size) * 100) : 100}%)`}`,
      String(f.readers),
      esc(formatDuration(f.elapsedMs)),
    ];
  });
  const queued = r.pulls.queued.map((q) => [esc(q.images.join(', ')), esc(formatDuration(q.waitingForMs)), esc(formatDuration(r.pulls.queueTimeoutMs))]);
  const limit = r.pulls.limit === null ? 'no limit' : `${r.pulls.active.length} of ${r.pulls.limit} pull slots in use`;
  return `<section id="pulls"><h2>Pulls in progress</h2><p class="empty">${esc(limit)}</p>${
    fills.length > 0 ? table(['image / blob', 'source', 'progress', 'bytes', 'waiting clients', 'for'], fills, [4, 5]) : '<p class="empty">No download in progress.</p>'
  }</section><section id="queue"><h2>Queue</h2>${
    queued.length > 0 ? table(['image', 'waiting', 'refused after'], queued, [1, 2]) : '<p class="empty">Nothing waits for a pull slot.</p>'
  }</section>`;
}

function storeSection(r: StatusReport): string {
  const s = r.store;
  const used = Math.min(100, s.usedPercent);
  const level = s.usedPercent >= s.highPercent ? 'high' : s.usedPercent >= s.lowPercent ? 'low' : '';
  const basis = s.basis === 'maxStorageBytes' ? 'maxStorageBytes' : 'the store’s filesystem';
  return `<section id="store"><h2>Store</h2><p>${esc(formatBytes(s.storedBytes))} of content; ${esc(formatBytes(s.usedBytes))} of ${esc(formatBytes(s.capacityBytes))} used (${esc(
    s.usedPercent.toFixed(1),
  )}% of ${esc(basis)}). Eviction starts at ${s.highPercent}% and frees down to ${s.lowPercent}%.</p>
<div class="bar" role="meter" aria-valuemin="0" aria-valuemax="100" aria-valuenow="${used.toFixed(1)}"><div class="used ${level}" style="width:${used.toFixed(2)}%"></div>
<div class="mark low" style="left:${s.lowPercent}%"><span>low ${s.lowPercent}%</span></div><div class="mark high" style="left:${s.highPercent}%"><span>high ${s.highPercent}%</span></div></div></section>`;
}

/** The status page: one server-rendered document that re-renders itself from the server every few seconds. */
export function renderStatusPage(r: StatusReport): string {
  const c = r.cache;
  const served = Object.values(c.bytesServed).reduce((n, b) => n + b, 0);
  const tiles = [
    [percent(c.hitRatio), `hit ratio (${c.hits} hits, ${c.misses} misses)`, 'hit-ratio'],
    [formatBytes(c.bytesSaved), 'saved: served without an upstream download', 'saved'],
    [formatBytes(served), 'served since start', 'served'],
    [formatBytes(c.bytesFetched), 'fetched from upstreams', 'fetched'],
    [`${r.pulls.active.length} / ${r.pulls.queued.length}`, 'pulls active / queued', 'pull-count'],
  ];
  const images = r.images.map((i) => [
    `${esc(i.names.join(', ') || '(unnamed)')}<br>${shortDigest(i.digest)}`,
    `${esc(formatBytes(i.sizeBytes))}${i.complete ? '' : ' (partial)'}`,
    `<time datetime="${esc(i.lastUsed)}">${esc(i.lastUsed.replace('T', ' ').slice(0, 19))}</time>`,
  ]);
  const errors = r.upstreamErrors.map((e) => [`<time datetime="${esc(e.at)}">${esc(e.at.slice(11, 19))}</time>`, esc(e.registry), `<span class="err">${esc(e.error)}</span>`]);
  const outcomes = Object.entries(r.verification.outcomes).sort(([a], [b]) => a.localeCompare(b));
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<link rel="icon" href="data:,"><title>registry-cache on ${esc(r.node)}</title><style>${STYLE}</style></head>
<body><main data-generated="${esc(r.generatedAt)}">
<header><h1>registry-cache on ${esc(r.node)}</h1><span class="meta">up ${esc(formatDuration(r.uptimeSeconds * 1000))} · policy ${esc(r.policy)} · updated ${esc(
    r.generatedAt.slice(11, 19),
  )} UTC, every ${REFRESH_SECONDS}s · <a href="/status.json">status.json</a> · <a href="/metrics">metrics</a></span></header>
<section class="tiles">${tiles.map(([value, label, id]) => `<div class="tile" id="${id}"><b>${esc(value)}</b><span>${esc(label)}</span></div>`).join('')}</section>
${pullsSection(r)}
${storeSection(r)}
<section id="images"><h2>Recently used images</h2>${images.length > 0 ? table(['image', 'size', 'last used (UTC)'], images, [1]) : '<p class="empty">The store is empty.</p>'}</section>
<section id="errors"><h2>Recent upstream errors</h2>${errors.length > 0 ? table(['time (UTC)', 'registry', 'error'], errors) : '<p class="empty">None since start.</p>'}</section>
<section id="verification"><h2>Credential verification</h2><p>Policy <b>${esc(r.verification.policy)}</b>.</p>${
    outcomes.length > 0 ? table(['outcome', 'count'], outcomes.map(([k, v]) => [esc(k), String(v)]), [1]) : '<p class="empty">No verification since start.</p>'
  }</section>
</main><script>${SCRIPT}</script></body></html>
`;
}
