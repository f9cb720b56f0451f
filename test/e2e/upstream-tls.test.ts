import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { checkRegistries } from '../../src/upstream/check.js';
import { startCache, type TestCache } from '../support/cache-server.js';
import { startDockerRegistry, type DockerRegistry } from '../support/docker-registry.js';
import { call, errorCode } from '../support/http-client.js';
import { makeTestPki, type TestPki } from '../support/test-pki.js';
import { e2eGate } from '../support/tools.js';

const gate = e2eGate(['docker-registry']);
if (!gate.run) console.warn(`skipping e2e upstream TLS tests: ${gate.reason}`);

describe.runIf(gate.run)('failures against a real docker-registry requiring client certificates name their cause', () => {
  let pki: TestPki;
  let foreign: TestPki;
  let registry: DockerRegistry;
  const caches: TestCache[] = [];

  beforeAll(async () => {
    pki = makeTestPki();
    foreign = makeTestPki('another test CA');
    registry = await startDockerRegistry({ tls: { cert: pki.serverCertPem, key: pki.serverKeyPem, clientCas: pki.caPem } });
  });
  afterEach(async () => {
    for (const c of caches.splice(0)) await c.stop();
  });
  afterAll(async () => {
    await registry?.stop();
  });

  async function manifest(transport: Record<string, unknown>) {
    const cache = await startCache({}, { registries: { [registry.host]: { url: registry.url, ca: pki.caPem, ...transport } }, defaultRegistry: registry.host });
    caches.push(cache);
    const res = await call(`${cache.url}/v2/app/manifests/v1?ns=${registry.host}`);
    const body = JSON.parse(res.body.toString('utf8')) as { errors: { message: string; detail?: { class?: string; reason?: string } }[] };
    return { status: res.status, code: errorCode(res), message: body.errors[0]?.message ?? '', detail: body.errors[0]?.detail };
  }

  it('says the registry requires a client certificate when the cache presents none', async () => {
    const res = await manifest({});
    expect([res.status, res.code, res.detail?.class]).toEqual([502, 'UNAVAILABLE', 'client-cert']);
    expect(res.message).toMatch(new RegExp(`^upstream ${registry.host} requires a client certificate \\(TLS alert: [a-z ]+\\); set registries\\.${registry.host.replace(/\./g, '\\.')}\\.clientCert and clientKey$`));
  });

  it('says the registry rejected the client certificate when it does not trust its issuer', async () => {
    const res = await manifest({ clientCert: foreign.clientCertPem, clientKey: foreign.clientKeyPem });
    expect([res.status, res.code, res.detail?.class]).toEqual([502, 'UNAVAILABLE', 'client-cert']);
    expect(res.message).toMatch(/rejected the client certificate/);
  });

  it('gets through with the right client certificate (the registry answers MANIFEST_UNKNOWN), and check says so', async () => {
    const res = await manifest({ clientCert: pki.clientCertPem, clientKey: pki.clientKeyPem });
    expect([res.status, res.code]).toEqual([404, 'MANIFEST_UNKNOWN']);
    const config = loadConfig({
      env: {},
      overrides: {
        registries: {
          good: { url: registry.url, ca: pki.caPem, clientCert: pki.clientCertPem, clientKey: pki.clientKeyPem },
          nocert: { url: registry.url, ca: pki.caPem },
        },
        defaultRegistry: 'good',
      },
    });
    const checks = await checkRegistries(config, { env: {} });
    expect(checks.map((c) => [c.registry, c.ok])).toEqual([
      ['good', true],
      ['nocert', false],
    ]);
    expect(checks[0]?.summary).toBe('reachable, TLS ok, direct, auth: none');
    expect(checks[1]?.summary).toMatch(/^client-cert: upstream nocert requires a client certificate/);
  });
});
