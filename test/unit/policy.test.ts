import { describe, expect, it } from 'vitest';
import { Allowlist, parseAllowlistEntry } from '../../src/policy/allowlist.js';
import { CredentialHasher } from '../../src/policy/credential-hash.js';
import { keyMatchesImage } from '../../src/policy/image-match.js';
import { parseCredentialProviderConfig, parseDockerConfig } from '../../src/policy/node-credentials.js';

describe('preloadedImagesVerificationAllowlist entries', () => {
  it.each([
    ['alpine', { kind: 'exact', name: 'docker.io/library/alpine' }],
    ['docker.io/library/alpine', { kind: 'exact', name: 'docker.io/library/alpine' }],
    ['registry.k8s.io/pause', { kind: 'exact', name: 'registry.k8s.io/pause' }],
    ['registry.example/team/*', { kind: 'prefix', prefix: 'registry.example/team/' }],
    ['registry.example/*', { kind: 'prefix', prefix: 'registry.example/' }],
    ['localhost:5000/*', { kind: 'prefix', prefix: 'localhost:5000/' }],
    ['team/*', { kind: 'prefix', prefix: 'docker.io/team/' }],
  ])('accepts %s', (entry, parsed) => {
    expect(parseAllowlistEntry(entry)).toEqual(parsed);
  });

  it.each(['*', '/*', '', 'registry.example/*/app', 'registry.example/team*', 'alpine:3.20', `alpine@sha256:${'a'.repeat(64)}`, 'Upper/app', 'a b'])(
    'rejects %j naming the entry',
    (entry) => {
      expect(() => parseAllowlistEntry(entry)).toThrow(`entry "${entry}"`);
    },
  );

  it('matches normalized names exactly or by prefix', () => {
    const list = Allowlist.parse(['alpine', 'registry.example/team/*']);
    expect(list.matches({ registry: 'docker.io', repository: 'library/alpine' })).toBe(true);
    expect(list.matches({ registry: 'docker.io', repository: 'library/alpine2' })).toBe(false);
    expect(list.matches({ registry: 'registry.example', repository: 'team/app' })).toBe(true);
    expect(list.matches({ registry: 'registry.example', repository: 'team/sub/app' })).toBe(true);
    expect(list.matches({ registry: 'registry.example', repository: 'teamx/app' })).toBe(false);
    expect(list.matches({ registry: 'registry.example', repository: 'team' })).toBe(false);
  });
});

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

describe('credential hashes', () => {
  it('are keyed: the same credential hashes differently under another node secret', () => {
    const a = CredentialHasher.fromKey(Buffer.alloc(32, 1));
    const b = CredentialHasher.fromKey(Buffer.alloc(32, 2));
    const cred = { username: 'u', password: 'p' };
    expect(a.hash(cred)).toMatch(/^[a-f0-9]{64}$/);
    expect(a.hash(cred)).toBe(a.hash({ ...cred }));
    expect(a.hash(cred)).not.toBe(b.hash(cred));
    expect(a.hash({ username: 'u:', password: 'p' })).not.toBe(a.hash({ username: 'u', password: ':p' }));
    expect(CredentialHasher.equal(a.hash(cred), a.hash(cred))).toBe(true);
    expect(CredentialHasher.equal(a.hash(cred), b.hash(cred))).toBe(false);
  });
});

describe('the token service', () => {
  it('forgets expired tokens and their credentials, and bounds how many it holds', async () => {
    const { TokenService } = await import('../../src/policy/tokens.js');
    const tokens = new TokenService(20, 3);
    const identity = { kind: 'credential' as const, credential: { username: 'u', password: 'p' }, hash: 'ab' };
    const target = { registry: 'r', repository: 'a' };
    const first = tokens.issue(identity, target).token;
    expect(tokens.resolve(first, target)).toEqual(identity);
    expect(tokens.resolve(first, { registry: 'r', repository: 'b' })).toBeUndefined();
    await new Promise((r) => setTimeout(r, 60));
    expect(tokens.size).toBe(0);
    expect(tokens.resolve(first, target)).toBeUndefined();
    const minted = [1, 2, 3, 4].map(() => tokens.issue({ kind: 'anonymous' }, target).token);
    expect(tokens.size).toBe(3);
    expect(tokens.resolve(minted[0] as string, target)).toBeUndefined();
    expect(tokens.resolve(minted[3] as string, target)).toEqual({ kind: 'anonymous' });
    tokens.close();
  });
});
