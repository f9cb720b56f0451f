import { describe, expect, it } from 'vitest';
import { assertRepositoryName, isTag, parseImageReference } from '../../../src/oci/reference.js';
import { codeOf } from '../../support/oci-error.js';

const HEX64 = 'a'.repeat(64);

describe('names and tags', () => {
  it.each(['busybox', 'library/busybox', 'a/b/c', 'my-app_1.2', 'a__b', 'a--b'])('accepts repository %s', (n) => {
    expect(() => assertRepositoryName(n)).not.toThrow();
  });

  it.each(['', 'Upper', 'a//b', '/a', 'a/', 'a..b', '-a', 'a_', '../etc', 'a:b', 'a'.repeat(256)])('rejects repository %s', (n) => {
    expect(codeOf(() => assertRepositoryName(n))).toBe('NAME_INVALID');
  });

  it('follows the tag grammar', () => {
    expect(isTag('latest')).toBe(true);
    expect(isTag('_x.Y-1')).toBe(true);
    expect(isTag('x'.repeat(128))).toBe(true);
    expect(isTag('x'.repeat(129))).toBe(false);
    expect(isTag('.x')).toBe(false);
    expect(isTag('-x')).toBe(false);
    expect(isTag('a/b')).toBe(false);
  });

  it('normalizes image references like the kubelet', () => {
    expect(parseImageReference('busybox')).toEqual({ registry: 'docker.io', repository: 'library/busybox' });
    expect(parseImageReference('busybox:1.32.0')).toMatchObject({ repository: 'library/busybox', tag: '1.32.0' });
    expect(parseImageReference('registry.k8s.io/pause:3.5')).toEqual({ registry: 'registry.k8s.io', repository: 'pause', tag: '3.5' });
    expect(parseImageReference(`registry.k8s.io/pause:3.5@sha256:${HEX64}`)).toMatchObject({ tag: '3.5', digest: `sha256:${HEX64}` });
    expect(parseImageReference('localhost:5000/app')).toEqual({ registry: 'localhost:5000', repository: 'app' });
    expect(parseImageReference('index.docker.io/alpine')).toEqual({ registry: 'docker.io', repository: 'library/alpine' });
    expect(parseImageReference('example/app')).toEqual({ registry: 'docker.io', repository: 'example/app' });
  });
});
