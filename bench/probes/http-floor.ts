/**
 * Probe (not part of `npm run bench`): how close warm manifests by digest are to what a Node server can answer at
 * all on this machine. wrk as in scenario 2 (1 thread, 64 connections, 5 s, containerd's Accept list) asks, in
 * interleaved rounds:
 *
 * - `node:http`: a bare `node:http` server in its own process answering every request with the same manifest bytes
 *   and the headers registry-cache sends with them (no routing, no parsing, no lookups);
 * - `fastify`: the same answer from a fastify route `/v2/*` in its own process (logger off): the framework's floor;
 * - `registry-cache`: the real server (dist/cli.js, the bench's flags and defaults) answering by digest a manifest
 *   it stored from an in-process synthetic upstream.
 *
 * Prints requests/s per way (median of the rounds) and registry-cache's share of each floor.
 * Usage: `npm run build && tsc -p bench/tsconfig.json && node bench/out/bench/probes/http-floor.js [rounds]` (needs wrk).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type OutgoingHttpHeaders } from 'node:http';
import Fastify from 'fastify';
import { FakeUpstream, makeImage } from '../../test/support/fake-upstream.js';
import { MANIFEST_ACCEPT, runWrk } from '../clients.js';
import { summarize } from '../stats.js';
import { startCache } from '../systems.js';
import { Teardown } from '../teardown.js';

const WRK = { connections: 64, threads: 1, durationSeconds: 5, headers: { accept: MANIFEST_ACCEPT } };

/** Child mode: serve `body` with `headers` on an ephemeral port, the bare way or through fastify; print the port. */
async function serve(kind: 'node:http' | 'fastify', body: Buffer, headers: OutgoingHttpHeaders): Promise<void> {
  // A normal exit on SIGINT, so that `--cpu-prof` writes its profile.
  process.on('SIGINT', () => process.exit(0));
  if (kind === 'node:http') {
    const server = createServer((_req, res) => {
      res.writeHead(200, headers);
      res.end(body);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const address = server.address();
    process.stdout.write(`${typeof address === 'object' && address ? address.port : 0}\n`);
    return;
  }
  const app = Fastify({ logger: false });
  app.get('/v2/*', async (_request, reply) => {
    reply.headers(headers);
    return reply.send(body);
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  process.stdout.write(`${typeof address === 'object' && address ? address.port : 0}\n`);
}

/** Starts this file in child mode; resolves with its base URL. */
async function startFloor(kind: 'node:http' | 'fastify', body: Buffer, headers: OutgoingHttpHeaders, teardown: Teardown): Promise<string> {
  const child = spawn(process.execPath, [process.argv[1] ?? '', 'serve', kind, body.toString('base64'), JSON.stringify(headers)], { stdio: ['ignore', 'pipe', 'inherit'] });
  teardown.add(kind, async () => {
    child.kill();
  });
  const [chunk] = (await once(child.stdout, 'data')) as [Buffer];
  return `http://127.0.0.1:${chunk.toString().trim()}`;
}

async function main(rounds: number): Promise<void> {
  const teardown = new Teardown();
  try {
    const upstream = await new FakeUpstream().start();
    teardown.add('upstream', () => upstream.stop());
    const image = makeImage([1024, 2048, 4096]);
    upstream.push('probe/app', 'v1', image);
    const cache = await startCache({ registryHost: upstream.host, upstreamUrl: upstream.url }, teardown);
    const path = `/v2/probe/app/manifests/${image.manifestDigest}`;
    const first = await fetch(cache.url + path, { headers: { accept: MANIFEST_ACCEPT } });
    const body = Buffer.from(await first.arrayBuffer());
    if (first.status !== 200 || !body.equals(image.manifest)) throw new Error(`registry-cache answered ${first.status}`);
    // The floors send what registry-cache sent, minus what Node adds itself.
    const headers: OutgoingHttpHeaders = {};
    first.headers.forEach((value, key) => {
      if (!['date', 'connection', 'keep-alive', 'transfer-encoding'].includes(key)) headers[key] = value;
    });
    const ways: Record<string, string> = {
      'node:http': await startFloor('node:http', body, headers, teardown),
      fastify: await startFloor('fastify', body, headers, teardown),
      'registry-cache': cache.url,
    };
    const rps = new Map<string, number[]>(Object.keys(ways).map((k) => [k, []]));
    for (let round = 0; round < rounds; round++) {
      for (const [way, base] of Object.entries(ways)) {
        await new Promise((r) => setTimeout(r, 1_000));
        const result = await runWrk(base + path, WRK);
        if (result.errors > 0) throw new Error(`${way}: ${result.errors} errors`);
        rps.get(way)?.push(result.requestsPerSecond);
      }
    }
    const median = (way: string): number => summarize(rps.get(way) ?? []).median;
    console.log(`| way (${image.manifest.length}-byte manifest, median of ${rounds} rounds) | req/s | rounds | registry-cache / this |`);
    console.log('|---|---:|---|---:|');
    for (const way of Object.keys(ways)) {
      console.log(`| ${way} | ${median(way).toFixed(0)} | ${(rps.get(way) ?? []).map((x) => x.toFixed(0)).join(' / ')} | ${(median('registry-cache') / median(way)).toFixed(2)} |`);
    }
  } finally {
    await teardown.runAll();
  }
}

if (process.argv[2] === 'serve') {
  await serve(process.argv[3] as 'node:http' | 'fastify', Buffer.from(process.argv[4] ?? '', 'base64'), JSON.parse(process.argv[5] ?? '{}') as OutgoingHttpHeaders);
} else {
  await main(Number(process.argv[2] ?? 3));
}
