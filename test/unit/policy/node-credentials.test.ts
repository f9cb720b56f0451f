import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { keyMatchesImage } from '../../../src/policy/image-match.js';
import { NodeCredentials, parseCredentialProviderConfig, parseDockerConfig } from '../../../src/policy/node-credentials.js';

describe('config.json key matching (Kubernetes rules)', () => {
  it.each([
    ['*.kubernetes.io', 'kubernetes.io/app', false],
    ['*.kubernetes.io', 'abc.kubernetes.io/app', true],
    ['*.*.kubernetes.io', 'abc.kubernetes.io/app', false],
    ['*.*.kubernetes.io', 'abc.def.kubernetes.io/app', true],
    ['prefix.*.io', 'prefix.kubernetes.io/app', true],
    ['*-good.kubernetes.io', 'prefix-good.kubernetes.io/app', true],
    ['my-registry.example/images', 'my-registry.example/images', true],
    ['my-registry.example/images', 'my-registry.example/images/my-image', true],
    ['my-registry.example/images', 'my-registry.example/imagesx/my-image', false],
    ['*.my-registry.example/images', 'sub.my-registry.example/images/my-image', true],
    ['*.my-registry.example/images', 'a.sub.my-registry.example/images/my-image', false],
    ['my-registry.example/images', 'a.b.sub.my-registry.example/images/my-image', false],
    ['https://registry.example:5000', 'registry.example:5000/app', true],
    ['registry.example:5000', 'registry.example/app', false],
    ['https://index.docker.io/v1/', 'docker.io/library/alpine', true],
  ])('%s vs %s → %s', (key, image, match) => {
    expect(keyMatchesImage(key, image)).toBe(match);
  });

  it('reads auth and username/password entries, most specific first', () => {
    const entries = parseDockerConfig(
      JSON.stringify({
        auths: {
          'my-registry.example/images': { auth: Buffer.from('u1:p1').toString('base64') },
          'my-registry.example/images/subpath': { username: 'u2', password: 'p2' },
          'empty.example': {},
        },
      }),
      'config.json',
    );
    expect(entries.map((e) => [e.key, e.credential.username])).toEqual([
      ['my-registry.example/images/subpath', 'u2'],
      ['my-registry.example/images', 'u1'],
    ]);
    expect(() => parseDockerConfig('{', 'f.json')).toThrow('f.json: not valid JSON');
  });

  it('validates a CredentialProviderConfig', () => {
    const ok = parseCredentialProviderConfig(
      'apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: ecr\n    matchImages: ["*.dkr.ecr.*.amazonaws.com"]\n    defaultCacheDuration: 12h\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n',
      'cp.yaml',
    );
    expect(ok[0]).toMatchObject({ name: 'ecr', defaultCacheDuration: 43_200_000 });
    expect(() => parseCredentialProviderConfig('kind: Other\n', 'cp.yaml')).toThrow('kind must be CredentialProviderConfig');
    expect(() =>
      parseCredentialProviderConfig('kind: CredentialProviderConfig\nproviders:\n  - name: ../x\n    matchImages: [a]\n    defaultCacheDuration: 1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n', 'cp.yaml'),
    ).toThrow('providers[0].name');
  });
});

describe('credential provider answers', () => {
  it('expired answers cached per image are dropped, not kept for every name a client ever asked for', async () => {
    const work = await mkdtemp(join(tmpdir(), 'rc-provider-'));
    try {
      const bin = join(work, 'bin');
      await mkdir(bin);
      await writeFile(
        join(bin, 'image-keyed'),
        `#!${process.execPath}
process.stdout.write(JSON.stringify({ apiVersion: 'credentialprovider.kubelet.k8s.io/v1', kind: 'CredentialProviderResponse', cacheKeyType: 'Image', cacheDuration: '1m', auth: {} }));
`,
      );
      await chmod(join(bin, 'image-keyed'), 0o755);
      await writeFile(
        join(work, 'providers.yaml'),
        `apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: image-keyed
    matchImages: ["registry.example"]
    defaultCacheDuration: 1m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
`,
      );
      const nodeCredentials = await NodeCredentials.load({ providerConfig: join(work, 'providers.yaml'), providerBinDir: bin, log: pino({ level: 'silent' }) });
      vi.useFakeTimers({ toFake: ['Date'] });
      for (const name of ['one', 'two', 'three']) {
        await nodeCredentials.lookup(`registry.example/${name}`);
        vi.setSystemTime(Date.now() + 2 * 60_000);
      }
      await nodeCredentials.lookup('registry.example/four');
      expect(nodeCredentials.cachedAnswers).toBe(1);
    } finally {
      vi.useRealTimers();
      await rm(work, { recursive: true, force: true });
    }
  });
});
