import { describe, expect, it } from 'vitest';
import { Allowlist, parseAllowlistEntry } from '../../../src/config/allowlist.js';

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
