import { createServer, connect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { pipeline } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { startDockerRegistry, type DockerRegistry } from '../support/docker-registry.js';
import { call } from '../support/http-client.js';
import { makeOciLayout } from '../support/make-image.js';
import { pushImage } from '../support/registry-client.js';
import { makeTempDir, removeTempDir } from '../support/temp-dir.js';
import { e2eGate } from '../support/tools.js';

const gate = e2eGate(['docker-registry']);
if (!gate.run) console.warn(`skipping upstream keep-alive tests: ${gate.reason}`);

/** A TCP relay in front of the registry that counts the connections opened through it. */
async function countingRelay(target: { host: string; port: number }): Promise<{ host: string; url: string; connections: () => number; close: () => Promise<void> }> {
  let connections = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    connections++;
    const upstream = connect(target.port, target.host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.once('close', () => sockets.delete(s));
    }
    pipeline(client, upstream, client, () => {
      client.destroy();
      upstream.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    host: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    connections: () => connections,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe.runIf(gate.run)('upstream connections against a real docker-registry (undici 8)', () => {
  let work: string;
  let registry: DockerRegistry;
  let relay: Awaited<ReturnType<typeof countingRelay>>;
  let cache: TestCache;

  beforeAll(async () => {
    work = await makeTempDir('rc-keepalive-');
    registry = await startDockerRegistry();
    const layout = await makeOciLayout(join(work, 'oci'), { mediaTypes: 'oci', images: [{ tag: 'v1', layers: [{ sizeBytes: 4096, seed: 'keepalive' }] }] });
    await pushImage(registry.url, 'apps/ka', layout, 'v1');
    relay = await countingRelay({ host: '127.0.0.1', port: registry.port });
    // tagTtl 0s: every request for the tag is a revalidation (a HEAD upstream).
    cache = await startCache({ [relay.host]: relay.url }, { tagTtl: '0s', imagePullCredentialsVerificationPolicy: 'NeverVerify' });
  }, 120_000);

  afterAll(async () => {
    await cache?.stop();
    await relay?.close();
    await registry?.stop();
    if (work) await removeTempDir(work);
  });

  it('reuses one connection for a fetch and ten tag revalidations (HEADs) in a row', async () => {
    expect((await call(`${cache.url}/v2/apps/ka/manifests/v1?ns=${relay.host}`)).status).toBe(200);
    const afterFetch = relay.connections();
    for (let i = 0; i < 10; i++) expect((await call(`${cache.url}/v2/apps/ka/manifests/v1?ns=${relay.host}`)).status).toBe(200);
    // Every request really was a revalidation: the registry saw ten manifest HEADs.
    await registry.waitForRequests((entries) => entries.filter((e) => e.method === 'HEAD' && e.uri.includes('/manifests/v1')).length >= 10);
    console.info(`[keep-alive] connections: ${afterFetch} for the first fetch, ${relay.connections()} after 10 revalidations`);
    expect(relay.connections()).toBe(afterFetch);
  });
});
