import { readFile, readdir, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { startContainerd, type ContainerdDaemon } from '../support/containerd.js';
import { startDockerRegistry, type DockerRegistry } from '../support/docker-registry.js';
import { imageByTag, makeOciLayout, type OciLayoutDescription } from '../support/make-image.js';
import { skopeoCopyToRegistry } from '../support/skopeo.js';
import { makeTempDir, removeTempDir } from '../support/temp-dir.js';
import { e2eGate } from '../support/tools.js';
import { runCli } from '../support/cli.js';

const gate = e2eGate(['docker-registry', 'skopeo', 'containerd', 'ctr']);
if (!gate.run) console.warn(`skipping e2e hosts tests: ${gate.reason}`);


describe.runIf(gate.run)('registry-cache hosts with a real containerd 1.6', () => {
  let work: string;
  let registry: DockerRegistry;
  let cache: TestCache;
  let layout: OciLayoutDescription;
  let containerd: ContainerdDaemon;

  beforeAll(async () => {
    work = await makeTempDir('rc-e2e-hosts-');
    registry = await startDockerRegistry();
    layout = await makeOciLayout(join(work, 'oci'), { mediaTypes: 'oci', images: [{ tag: 'v1', layers: [{ sizeBytes: 64 * 1024, seed: 'h1' }] }] });
    await skopeoCopyToRegistry(join(work, 'oci'), 'v1', `${registry.host}/hosts/app:v1`);
    cache = await startCache({ [registry.host]: registry.url, 'other.example': 'https://other.example' });
    containerd = await startContainerd();
  }, 120_000);

  afterAll(async () => {
    await containerd?.stop();
    await cache?.stop();
    await registry?.stop();
    if (work) await removeTempDir(work);
  });

  it('writes hosts.toml files that make ctr pull through the cache, and --restore puts the originals back byte for byte', async () => {
    const certs = join(work, 'certs.d');
    const config = join(work, 'config.yaml');
    await writeFile(config, `registries:\n  "${registry.host}": { url: "${registry.url}" }\n  other.example: { url: "https://other.example" }\ndefaultRegistry: "${registry.host}"\n`);
    const original = Buffer.from(`# the admin's own file\nserver = "http://127.0.0.1:9"\n\n[host."http://10.0.0.1:5000"]\n  capabilities = ["pull"]\n\u00e9\n`);
    await mkdir(join(certs, registry.host), { recursive: true });
    await writeFile(join(certs, registry.host, 'hosts.toml'), original);

    const written = await runCli(['hosts', '--certs-dir', certs, '--mirror', cache.url, '--config', config]);
    expect(written.code).toBe(0);
    expect(written.stdout).toContain('written (original backed up)');
    const toml = await readFile(join(certs, registry.host, 'hosts.toml'), 'utf8');
    expect(toml).toContain(`server = "${registry.url}"`);
    expect(toml).toContain(`[host."${cache.url}"]\n  capabilities = ["pull", "resolve"]`);
    // Running it twice keeps the first backup (the admin's file), not our own output.
    expect((await runCli(['hosts', '--certs-dir', certs, '--mirror', cache.url, '--config', config])).code).toBe(0);

    const ref = `${registry.host}/hosts/app:v1`;
    await containerd.pull(ref, { hostsDir: certs });
    expect(await containerd.check(ref)).toMatchObject({ digest: imageByTag(layout, 'v1').digest, complete: true });
    expect(cache.logs.filter((l) => l.includes('"path":"/v2/hosts/app/') && l.includes(`"ns":"${registry.host}"`)).length).toBeGreaterThanOrEqual(3);

    const restored = await runCli(['hosts', '--certs-dir', certs, '--restore', '--config', config]);
    expect(restored.code).toBe(0);
    expect((await readFile(join(certs, registry.host, 'hosts.toml'))).equals(original)).toBe(true);
    expect(await readdir(join(certs, registry.host))).toEqual(['hosts.toml']);
    expect(await readdir(certs)).toEqual([registry.host]);
  });
});
