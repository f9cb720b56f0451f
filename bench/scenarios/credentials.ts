import { startDockerRegistry } from '../../test/support/docker-registry.js';
import { basicAuthorization } from '../../test/support/registry-client.js';
import { MANIFEST_ACCEPT, pullImage, runWrk } from '../clients.js';
import { AUTH_USER, pushAll } from '../context.js';
import { RowSet, type SystemName } from '../results.js';
import type { Scenario } from '../scenario.js';
import { registryLastResort, startPeer, type ManagedServer } from '../systems.js';
import { own } from '../teardown.js';

/** 6: what checking a recorded credential costs on a warm pull, against the same pull under NeverVerify. */
export const credentials: Scenario = {
  id: 'credentials',
  number: '6',
  aliases: ['credential', 'verify', 'auth'],
  title: 'Credential verification cost',
  inDefaultRun: true,
  async run(ctx) {
    const s = ctx.settings.credentials;
    const img = ctx.images.manyLayers;
    const authUpstream = await startDockerRegistry({ htpasswd: [{ user: AUTH_USER.user, pass: AUTH_USER.pass }] });
    const removeUpstream = await own(ctx.teardown, `htpasswd upstream ${authUpstream.url}`, () => authUpstream.stop());
    ctx.teardown.lastResort(authUpstream.rootDir, registryLastResort(authUpstream.rootDir));
    const started: ManagedServer[] = [];
    try {
      await pushAll(authUpstream.url, ctx.images.layout, [img], AUTH_USER);
      const target = { registryHost: authUpstream.host, upstreamUrl: authUpstream.url };
      const verify = await ctx.startCacheVariant('rc-always-verify', { ...target, config: { imagePullCredentialsVerificationPolicy: 'AlwaysVerify' } });
      started.push(verify);
      const never = await ctx.startCacheVariant('rc-never-verify', { ...target, config: { imagePullCredentialsVerificationPolicy: 'NeverVerify' } });
      started.push(never);
      const peer = await startPeer({ name: 'peer-auth', remoteUrl: authUpstream.url, username: AUTH_USER.user, password: AUTH_USER.pass }, ctx.teardown);
      started.push(peer);
      const auth = { authorization: basicAuthorization(AUTH_USER) };
      const systems: Array<{ system: SystemName; server: ManagedServer; headers: Record<string, string> }> = [
        { system: 'rc AlwaysVerify', server: verify, headers: auth },
        { system: 'rc NeverVerify', server: never, headers: auth },
        // The peer holds the upstream credential itself (proxy.username/password) and serves anyone.
        { system: 'peer', server: peer, headers: {} },
      ];
      // The first pull fetches from the upstream with the credential, which records it (AlwaysVerify) and stores everything.
      const notes: string[] = [];
      for (const x of [...systems]) {
        try {
          await pullImage(x.server.url, img.repo, img.tag, { concurrency: s.concurrency, headers: x.headers });
        } catch (err) {
          const message = `first pull through ${x.system} failed: ${err instanceof Error ? err.message : String(err)}`;
          if (x.system !== 'peer') throw new Error(message);
          // Reference only: observed with distribution 2.8.2, whose proxy answers 404 after its own requests to a Basic-auth upstream got 401.
          notes.push(`The peer is left out: ${message.trim()}. Its requests to the htpasswd upstream (GET /v2/, HEAD and GET of the manifest) were all answered 401: distribution 2.8.2's proxy did not send proxy.username/password to a Basic-auth upstream here.`);
          systems.splice(systems.indexOf(x), 1);
        }
      }
      const rows = new RowSet();
      const manifestPath = `/v2/${img.repo}/manifests/${img.image.digest}`;
      for (let rep = 0; rep < s.reps; rep++) {
        for (const x of systems) {
          const before = (await authUpstream.requests()).length;
          const times: number[] = [];
          for (let i = 0; i < s.pullsPerRep; i++) {
            const r = await pullImage(x.server.url, img.repo, img.image.digest, { concurrency: s.concurrency, headers: x.headers });
            times.push(r.seconds * 1000);
          }
          times.sort((a, b) => a - b);
          const median = times[Math.floor(times.length / 2)] as number;
          const w = await runWrk(x.server.url + manifestPath, {
            connections: 64,
            threads: 1,
            durationSeconds: s.durationSeconds,
            headers: { accept: MANIFEST_ACCEPT, ...x.headers },
          });
          const upstreamRequests = (await authUpstream.requests()).length - before;
          rows.add('cred-pull', { label: `warm pull by digest (manifest + ${img.image.blobs.length} blobs), median of ${s.pullsPerRep}`, unit: 'ms', better: 'lower', digits: 1 }, x.system, median);
          rows.add('cred-manifest-rps', { label: 'manifest by digest with the credential, 64 connections', unit: 'req/s', better: 'higher', digits: 0 }, x.system, w.requestsPerSecond);
          rows.add('cred-manifest-p99', { label: 'manifest by digest: p99 latency', unit: 'ms', better: 'lower', digits: 2 }, x.system, w.p99Ms);
          rows.add('cred-errors', { label: 'errors (pull failures count as thrown; wrk non-2xx + socket)', unit: 'count', better: 'lower', digits: 0 }, x.system, w.errors);
          rows.add('cred-upstream', { label: 'upstream requests while measuring (0 = answered from records)', unit: 'count', better: 'lower', digits: 0 }, x.system, upstreamRequests);
          ctx.log(`  rep ${rep + 1} ${x.system}: pull ${median.toFixed(1)} ms, manifest ${w.requestsPerSecond.toFixed(0)} req/s, upstream requests ${upstreamRequests}`);
        }
      }
      return {
        method: `A second upstream docker-registry with auth.htpasswd holds the ${img.repo} image. Two registry-cache instances point at it: one with \`imagePullCredentialsVerificationPolicy: AlwaysVerify\`, one with \`NeverVerify\`; clients send \`Authorization: Basic\` on every request. One untimed pull by tag fetches everything with that credential (recording it under AlwaysVerify); then each repetition times ${s.pullsPerRep} warm pulls by digest (manifest + every blob, ${s.concurrency} at a time, digests verified) and runs wrk on the manifest by digest for ${s.durationSeconds} s at 64 connections with the header. The peer (docker-registry proxy holding the credential in proxy.username/password, clients anonymous) is shown for reference when it manages the first pull (see the notes). ${s.reps} repetitions.`,
        columns: systems.map((x) => x.system),
        ratios: [
          { label: 'AlwaysVerify / NeverVerify', numerator: 'rc AlwaysVerify', denominator: 'rc NeverVerify' },
          ...(systems.some((x) => x.system === 'peer') ? [{ label: 'AlwaysVerify / peer', numerator: 'rc AlwaysVerify' as const, denominator: 'peer' as const }] : []),
        ],
        rows: rows.rows,
        notes,
      };
    } finally {
      for (const server of started.reverse()) await server.destroy();
      removeUpstream();
      await authUpstream.stop();
      ctx.teardown.lastResort(authUpstream.rootDir, undefined);
    }
  },
};
