import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SharedBandwidth } from '../../bench/bandwidth.js';
import { startCountingProxy, type CountingProxy } from '../../bench/counting-proxy.js';
import { Teardown } from '../../bench/teardown.js';
import { startCacheProcess, type CacheProcess } from '../support/cache-process.js';
import { DEAD_SERVER, startContainerd, writeHostsToml, type ContainerdDaemon } from '../support/containerd.js';
import { startDockerRegistry, type DockerRegistry } from '../support/docker-registry.js';
import { findFreePort } from '../support/free-port.js';
import { imageByTag, makeOciLayout, type ImageDescription } from '../support/make-image.js';
import { skopeoCopyToRegistry } from '../support/skopeo.js';
import { makeTempDir, removeTempDir } from '../support/temp-dir.js';
import { e2eGate } from '../support/tools.js';

const gate = e2eGate(['docker-registry', 'skopeo', 'containerd', 'ctr']);
if (!gate.run) console.warn(`skipping e2e peer sharing tests: ${gate.reason}`);

const MIB = 1024 * 1024;

describe.runIf(gate.run)('two nodes sharing blobs: containerd → registry-cache ⇄ registry-cache → docker-registry', () => {
  let work: string;
  let registry: DockerRegistry;
  let proxy: CountingProxy;
  let image: ImageDescription;
  const teardown = new Teardown();
  const caches: CacheProcess[] = [];
  const daemons: ContainerdDaemon[] = [];

  beforeAll(async () => {
    work = await makeTempDir('rc-e2e-peers-');
    registry = await startDockerRegistry();
    const layout = await makeOciLayout(join(work, 'oci'), {
      mediaTypes: 'oci',
      images: [{ tag: 'v1', layers: [1, 2, 3].map((i) => ({ sizeBytes: 2 * MIB, seed: `peer-${i}` })) }],
    });
    image = imageByTag(layout, 'v1');
    await skopeoCopyToRegistry(join(work, 'oci'), 'v1', `${registry.host}/shared/app:v1`);
    // A slow upstream (6 MiB of layers at 8 MiB/s) keeps both nodes' downloads in flight together, which is the case
    // sharing is for: without it the second node would usually find the blobs complete on the first.
    proxy = await startCountingProxy(registry.url, teardown, { bandwidth: new SharedBandwidth(8 * MIB) });
    const peers = [`127.0.0.1:${await findFreePort()}`, `127.0.0.1:${await findFreePort()}`];
    const secret = join(work, 'peer-secret');
    await writeFile(secret, randomBytes(48).toString('base64'), { mode: 0o600 });
    for (const peerListen of peers) {
      const sharing = [`peers: ${JSON.stringify(peers)}`, `peerListen: "${peerListen}"`, `peerSecret: "${secret}"`];
      // The defaults (200 ms to connect, 500 ms to answer) send a node upstream when its peer is slow, as they should;
      // on a CI machine running other suites at once that happened in 1 run of 17. This test is about the sharing, so
      // the peers get time; the fallbacks are the integration tests' subject.
      const patient = ['peerConnectTimeout: 5s', 'peerAnswerTimeout: 10s'];
      caches.push(await startCacheProcess({ [registry.host]: proxy.url }, ['imagePullCredentialsVerificationPolicy: NeverVerify', ...sharing, ...patient]));
    }
    for (const [i, cache] of caches.entries()) {
      // Each node's containerd knows only its own cache; the server is dead so that nothing bypasses it.
      await writeHostsToml(join(work, `certs-${i}`), registry.host, { server: DEAD_SERVER, mirrors: [{ url: cache.url, capabilities: ['pull', 'resolve'] }] });
      daemons.push(await startContainerd());
    }
  }, 180_000);

  afterAll(async () => {
    for (const d of daemons) await d.stop().catch(() => undefined);
    for (const c of caches) await c.stop().catch(() => undefined);
    await teardown.runAll(() => undefined);
    await registry?.stop();
    if (work) await removeTempDir(work);
  });

  it('pulls the same cold image on both nodes at once with exactly one upstream GET per blob', async () => {
    const ref = `${registry.host}/shared/app:v1`;
    proxy.reset();
    await Promise.all(daemons.map((d, i) => d.pull(ref, { hostsDir: join(work, `certs-${i}`), timeoutMs: 120_000 })));
    for (const d of daemons) expect(await d.check(ref)).toMatchObject({ digest: image.digest, complete: true });
    const blobs = image.blobs;
    const gets = Object.fromEntries(blobs.map((b) => [b.digest, proxy.counts().byRequest.get(`GET /v2/shared/app/blobs/${b.digest}`) ?? 0]));
    // On a failure, the caches' logs say which source each blob came from and why a node went upstream.
    const logs = Object.values(gets).every((n) => n === 1) ? '' : (await Promise.all(caches.map((c) => c.daemon.readLog()))).join('\n---\n');
    expect(gets, logs).toEqual(Object.fromEntries(blobs.map((b) => [b.digest, 1])));
    // Together the upstream sent each blob once: nothing was fetched twice under another path or method.
    expect(proxy.counts().responseBytes).toBeLessThan(blobs.reduce((n, b) => n + b.size, 0) * 1.1 + 64 * 1024);
  });
});
