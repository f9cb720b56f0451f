import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/log.js';
import { preloadImage } from '../../src/preload/preload.js';
import { openStore } from '../../src/lifecycle/open-store.js';
import { startCache } from '../support/cache-server.js';
import { runCli } from '../support/cli.js';
import { FakeUpstream, makeImage } from '../support/fake-upstream.js';
import { call } from '../support/http-client.js';
import { writeOciLayout } from '../support/oci-layout.js';

describe('what the commands tell an operator', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const fn of cleanup.splice(0).reverse()) await fn();
  });

  async function workspace(extra = ''): Promise<{ work: string; storage: string; configFile: string; upstream: FakeUpstream }> {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    const work = await mkdtemp(join(tmpdir(), 'rc-usability-'));
    cleanup.push(() => rm(work, { recursive: true, force: true }));
    const storage = join(work, 'store');
    const configFile = join(work, 'config.yaml');
    await writeFile(configFile, `storage: ${storage}\nregistries:\n  "${upstream.host}": { url: "${upstream.url}" }\ndefaultRegistry: "${upstream.host}"\n${extra}`);
    return { work, storage, configFile, upstream };
  }

  it('gc --dry-run names the images it would evict; gc next to a running server says what to do instead', async () => {
    const { work, storage, configFile, upstream } = await workspace('maxStorageBytes: 1000\n');
    const one = makeImage([3000]);
    const two = makeImage([4000]);
    await writeOciLayout(join(work, 'one'), one);
    await writeOciLayout(join(work, 'two'), two);
    // Imported in-process (the CLI's preload has its own tests): fewer process starts on a loaded 2-core machine.
    const opened = await openStore(loadConfig({ file: configFile, env: {} }), createLogger('silent'));
    await preloadImage(join(work, 'one'), `${upstream.host}/apps/one:1.0`, opened);
    await preloadImage(join(work, 'two'), `${upstream.host}/apps/two:2.0`, opened);
    await opened.close();
    const dry = await runCli(['gc', '--dry-run', '--config', configFile]);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toContain(`would evict ${upstream.host}/apps/one:1.0 (${one.manifestDigest})`);
    expect(dry.stdout).toContain(`would evict ${upstream.host}/apps/two:2.0 (${two.manifestDigest})`);

    const cache = await startCache({ [upstream.host]: upstream.url }, { maxStorageBytes: 1000, gcInterval: '1h' }, storage);
    cleanup.push(() => cache.stop({ keepStorage: true }));
    const refused = await runCli(['gc', '--config', configFile]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`in use by registry-cache (pid ${process.pid})`);
    expect(refused.stderr).toContain('the running server evicts on its own');
    expect(refused.stderr).toContain('gc --dry-run');
    const repair = await runCli(['verify', '--repair', '--config', configFile]);
    expect(repair.code).toBe(1);
    expect(repair.stderr).toContain('run `verify` without --repair next to it to see the problems, or stop the server to repair');
    // What it would do can still be seen next to the server.
    const beside = await runCli(['gc', '--dry-run', '--config', configFile]);
    expect(beside.code).toBe(0);
    expect(beside.stdout).toContain(`${upstream.host}/apps/one:1.0`);
  });

  it('preload of a file that is no image says what it expected', async () => {
    const { work, configFile } = await workspace();
    await writeFile(join(work, 'junk.bin'), randomBytes(5000));
    const junk = await runCli(['preload', join(work, 'junk.bin'), '--config', configFile]);
    expect(junk.code).toBe(1);
    expect(junk.stderr).toContain('junk.bin is not an image archive: expected an OCI layout directory, an OCI archive (.tar) or a docker save .tar');
    await writeFile(join(work, 'image.tar.gz'), gzipSync(randomBytes(2000)));
    const gz = await runCli(['preload', join(work, 'image.tar.gz'), '--config', configFile]);
    expect(gz.code).toBe(1);
    expect(gz.stderr).toContain('image.tar.gz is gzip-compressed: preload reads an uncompressed tar (gunzip it first)');
  });

  it('a fresh empty store does not announce that verification was enabled with nothing preloaded; a filled one does', async () => {
    const upstream = await new FakeUpstream().start();
    cleanup.push(() => upstream.stop());
    upstream.push('app', '1', makeImage([100]));
    const first = await startCache({ [upstream.host]: upstream.url }, { imagePullCredentialsVerificationPolicy: 'NeverVerify' });
    expect((await call(`${first.url}/v2/app/manifests/1?ns=${upstream.host}`)).status).toBe(200);
    await first.stop({ keepStorage: true });
    const fresh = await startCache({ [upstream.host]: upstream.url });
    cleanup.push(() => fresh.stop());
    expect(fresh.logs.filter((l) => l.includes('enabled for the first time'))).toEqual([]);
    const filled = await startCache({ [upstream.host]: upstream.url }, {}, first.storage);
    cleanup.push(() => filled.stop());
    const announced = filled.logs.filter((l) => l.includes('enabled for the first time')).map((l) => JSON.parse(l) as { preloaded: number });
    // Only the manifest was fetched.
    expect(announced).toEqual([expect.objectContaining({ preloaded: 1 })]);
  });
});
