import { describe, expect, it } from 'vitest';
import { parseV2Path, resolveTarget } from '../../../src/oci/path.js';
import { codeOf } from '../../support/oci-error.js';

const HEX64 = 'a'.repeat(64);

describe('/v2/ paths', () => {
  it('parses every pull endpoint', () => {
    expect(parseV2Path('')).toEqual({ kind: 'base' });
    expect(parseV2Path('a/b/manifests/1.0')).toEqual({ kind: 'manifest', name: 'a/b', reference: '1.0', isDigest: false });
    expect(parseV2Path(`a/manifests/sha256:${HEX64}`)).toMatchObject({ kind: 'manifest', isDigest: true });
    expect(parseV2Path(`a/blobs/sha256:${HEX64}`)).toEqual({ kind: 'blob', name: 'a', digest: `sha256:${HEX64}` });
    expect(parseV2Path('a/b/tags/list')).toEqual({ kind: 'tags', name: 'a/b' });
    expect(parseV2Path(`a/referrers/sha256:${HEX64}`)).toMatchObject({ kind: 'referrers', name: 'a' });
    expect(parseV2Path('manifests/manifests/x')).toEqual({ kind: 'manifest', name: 'manifests', reference: 'x', isDigest: false });
    expect(parseV2Path('127.0.0.1:5000/app/manifests/x')).toMatchObject({ name: '127.0.0.1:5000/app' });
  });

  it('refuses pushes and unknown paths', () => {
    expect(codeOf(() => parseV2Path('a/blobs/uploads/'))).toBe('UNSUPPORTED');
    expect(codeOf(() => parseV2Path('a/what'))).toBe('NAME_INVALID');
    expect(codeOf(() => parseV2Path('a/manifests/b@c'))).toBe('MANIFEST_UNKNOWN');
  });

  it('resolves the upstream from ns, a host prefix, or the default', () => {
    const known = new Set(['docker.io', 'ghcr.io', '127.0.0.1:15000']);
    expect(resolveTarget('busybox', 'docker.io', known, 'docker.io')).toEqual({ registry: 'docker.io', repository: 'library/busybox' });
    expect(resolveTarget('busybox', 'registry-1.docker.io', known, 'docker.io')).toEqual({ registry: 'docker.io', repository: 'library/busybox' });
    expect(resolveTarget('ghcr.io/org/app', undefined, known, 'docker.io')).toEqual({ registry: 'ghcr.io', repository: 'org/app' });
    expect(resolveTarget('127.0.0.1:15000/app', undefined, known, 'docker.io')).toEqual({ registry: '127.0.0.1:15000', repository: 'app' });
    expect(resolveTarget('org/app', undefined, known, 'ghcr.io')).toEqual({ registry: 'ghcr.io', repository: 'org/app' });
    expect(codeOf(() => resolveTarget('app', 'quay.io', known, 'docker.io'))).toBe('DENIED');
    // A first component that names a host is a registry, never a namespace of the default one.
    for (const name of ['quay.io/org/app', 'localhost/app', 'registry.internal/app', '10.0.0.1:5000/app']) {
      expect(codeOf(() => resolveTarget(name, undefined, known, 'docker.io')), name).toBe('DENIED');
    }
    expect(resolveTarget('my-org/app', undefined, known, 'docker.io')).toEqual({ registry: 'docker.io', repository: 'my-org/app' });
  });
});
