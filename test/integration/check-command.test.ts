import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { checkRegistries } from '../../src/upstream/check.js';
import { runCli } from '../support/cli.js';
import { ConnectProxy } from '../support/connect-proxy.js';
import { FakeUpstream } from '../support/fake-upstream.js';
import { makeTestPki } from '../support/test-pki.js';

describe('registry-cache check', () => {
  const pki = makeTestPki();
  let bearer: FakeUpstream;
  let basic: FakeUpstream;
  let open: FakeUpstream;
  let goodProxy: ConnectProxy;
  let refusingProxy: ConnectProxy;
  let refusedPort: number;
  let work: string;

  beforeAll(async () => {
    const tls = { key: pki.serverKeyPem, cert: pki.serverCertPem };
    bearer = await new FakeUpstream().start({ tls });
    bearer.auth = { kind: 'bearer', users: { u: 'p' } };
    basic = await new FakeUpstream().start({ tls });
    basic.auth = { kind: 'basic', users: { u: 'p' } };
    open = await new FakeUpstream().start();
    goodProxy = await new ConnectProxy().start();
    refusingProxy = await new ConnectProxy().start();
    refusingProxy.refuse = 407;
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    refusedPort = (server.address() as AddressInfo).port;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    work = await mkdtemp(join(tmpdir(), 'rc-check-'));
  });
  afterAll(async () => {
    for (const s of [bearer, basic, open]) await s.stop();
    await goodProxy.stop();
    await refusingProxy.stop();
    await rm(work, { recursive: true, force: true });
  });

  const registries = () => ({
    'bearer.test': { url: bearer.url, ca: pki.caPem },
    'proxied.test': { url: basic.url, ca: pki.caPem, proxy: goodProxy.url.replace('http://', 'http://user:proxy-s3cret@') },
    'plain.test': { url: open.url },
    'refused-proxy.test': { url: bearer.url, ca: pki.caPem, proxy: refusingProxy.url },
    'refused.test': { url: `https://127.0.0.1:${refusedPort}` },
  });

  it('prints reachability, TLS, proxy and auth challenge per registry, and the failure class when it fails', async () => {
    const config = loadConfig({ env: {}, overrides: { registries: registries(), defaultRegistry: 'plain.test' } });
    const checks = await checkRegistries(config, { env: {} });
    const by = Object.fromEntries(checks.map((c) => [c.registry, c]));
    expect(checks).toHaveLength(5);
    expect(by['bearer.test']).toMatchObject({ ok: true, summary: `reachable, TLS ok, direct, auth: bearer (realm ${bearer.url}/token)` });
    expect(by['proxied.test']).toMatchObject({ ok: true, summary: `reachable, TLS ok, proxy ok (${goodProxy.url}), auth: basic (realm fake)` });
    expect(by['plain.test']).toMatchObject({ ok: true, summary: 'reachable, plain HTTP, direct, auth: none' });
    expect(by['refused-proxy.test']?.ok).toBe(false);
    expect(by['refused-proxy.test']?.summary).toMatch(/^proxy-auth: proxy authentication failed for upstream refused-proxy\.test: .*registries\.refused-proxy\.test\.proxy$/);
    expect(by['refused.test']?.ok).toBe(false);
    expect(by['refused.test']?.summary).toMatch(/^connect-refused: upstream refused\.test refused the connection/);
    expect(goodProxy.tunnels).toEqual([basic.host]);
    expect(checks.map((c) => c.summary).join('\n')).not.toContain('proxy-s3cret');
  });

  it('exits 0 when every registry answers and 1 when one fails, one line per registry', async () => {
    const { 'bearer.test': good, 'refused.test': bad } = registries();
    const goodFile = join(work, 'good.yaml');
    const badFile = join(work, 'bad.yaml');
    await writeFile(goodFile, JSON.stringify({ registries: { 'bearer.test': good }, defaultRegistry: 'bearer.test' }));
    await writeFile(badFile, JSON.stringify({ registries: { 'bearer.test': good, 'refused.test': bad }, defaultRegistry: 'bearer.test' }));
    const passing = await runCli(['check', '--config', goodFile]);
    expect(passing.code).toBe(0);
    expect(passing.stdout).toBe(`ok   bearer.test ${bearer.url}/: reachable, TLS ok, direct, auth: bearer (realm ${bearer.url}/token)\n`);
    const failing = await runCli(['check', '--config', badFile]);
    expect(failing.code).toBe(1);
    const lines = failing.stdout.trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatch(/^FAIL refused\.test https:\/\/127\.0\.0\.1:\d+\/: connect-refused: upstream refused\.test refused the connection/);
  });
});
