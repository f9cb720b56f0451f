import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { Allowlist, parseAllowlistEntry } from '../../src/config/allowlist.js';
import { CredentialHasher } from '../../src/policy/credential-hash.js';
import { keyMatchesImage } from '../../src/policy/image-match.js';
import { NodeCredentials, parseCredentialProviderConfig, parseDockerConfig } from '../../src/policy/node-credentials.js';

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
  const identity = { kind: 'credential' as const, credential: { username: 'u', password: 'p' }, hash: 'ab' };
  const target = { registry: 'r', repository: 'a' };

  it('resolves a token only within its scope and lifetime, and forgets all of them when closed', async () => {
    const { TokenService } = await import('../../src/policy/tokens.js');
    let now = 1_000_000;
    const tokens = new TokenService(20_000, { now: () => now });
    const first = tokens.issue(identity, target);
    expect(first.expiresInS).toBe(20);
    expect(tokens.resolve(first.token, target)).toEqual(identity);
    expect(tokens.resolve(first.token, undefined)).toEqual(identity);
    expect(tokens.resolve(first.token, { registry: 'r', repository: 'b' })).toBeUndefined();
    expect(tokens.resolve(first.token, { registry: 'q', repository: 'a' })).toBeUndefined();
    const ping = tokens.issue({ kind: 'anonymous' }, undefined).token;
    expect(tokens.resolve(ping, undefined)).toEqual({ kind: 'anonymous' });
    expect(tokens.resolve(ping, target)).toBeUndefined();
    now += 20_000;
    expect(tokens.resolve(first.token, target)).toBeUndefined();
    const second = tokens.issue(identity, target).token;
    tokens.close();
    expect(tokens.resolve(second, target)).toBeUndefined();
  });

  it('accepts no forged, altered or foreign token, and never puts the credential in the token readably', async () => {
    const { TokenService } = await import('../../src/policy/tokens.js');
    const tokens = new TokenService(60_000);
    const other = new TokenService(60_000);
    const token = tokens.issue({ kind: 'credential', credential: { username: 'tenant', password: 'sekr1t-pw' }, hash: 'cd' }, target).token;
    const raw = Buffer.from(token, 'base64url');
    expect(raw.toString('latin1')).not.toMatch(/tenant|sekr1t/);
    for (let i = 0; i < raw.length; i += 7) {
      const flipped = Buffer.from(raw);
      flipped[i] = (flipped[i] ?? 0) ^ 1;
      expect(tokens.resolve(flipped.toString('base64url'), target)).toBeUndefined();
    }
    for (const junk of ['', 'x', 'a'.repeat(100_000), raw.subarray(0, 20).toString('base64url')]) expect(tokens.resolve(junk, target)).toBeUndefined();
    expect(other.resolve(token, target)).toBeUndefined();
    tokens.close();
    other.close();
  });

  it("keeps a tenant's token through a flood of 100,500 anonymous and 100,500 made-up-credential tokens", async () => {
    const { TokenService } = await import('../../src/policy/tokens.js');
    const tokens = new TokenService(300_000);
    const tenant = tokens.issue(identity, target).token;
    for (let i = 0; i < 100_500; i++) tokens.issue({ kind: 'anonymous' }, { registry: 'r', repository: `flood/${i}` });
    expect(tokens.resolve(tenant, target)).toEqual(identity);
    for (let i = 0; i < 100_500; i++) tokens.issue({ kind: 'credential', credential: { username: `u${i}`, password: 'x' }, hash: 'ef' }, target);
    expect(tokens.resolve(tenant, target)).toEqual(identity);
    tokens.close();
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
