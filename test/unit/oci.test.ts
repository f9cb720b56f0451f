import { describe, expect, it } from 'vitest';
import { digestOf, parseDigest } from '../../src/oci/digest.js';
import { DEFAULT_STATUS, OciError } from '../../src/oci/errors.js';
import { accepts, parseAccept } from '../../src/oci/media-types.js';
import { parseV2Path, resolveTarget } from '../../src/oci/path.js';
import { assertRepositoryName, isTag, parseImageReference } from '../../src/oci/reference.js';

const HEX64 = 'a'.repeat(64);

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as OciError).code;
  }
  return undefined;
}

describe('digests', () => {
  it('accepts sha256 and sha512 digests of the right length', () => {
    expect(parseDigest(`sha256:${HEX64}`)).toEqual({ algorithm: 'sha256', hex: HEX64, value: `sha256:${HEX64}` });
    expect(parseDigest(`sha512:${'b'.repeat(128)}`).algorithm).toBe('sha512');
  });

  it.each([`sha256:${'a'.repeat(63)}`, `sha256:${'A'.repeat(64)}`, `md5:${'a'.repeat(32)}`, 'sha256', '', `sha512:${HEX64}`, `sha256:${HEX64}/../x`])(
    'rejects %s as DIGEST_INVALID',
    (d) => expect(codeOf(() => parseDigest(d))).toBe('DIGEST_INVALID'),
  );

  it('computes a digest string of bytes', () => {
    expect(digestOf(Buffer.from(''))).toBe('sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });
});

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

describe('Accept handling', () => {
  it('splits repeated and comma-joined Accept headers', () => {
    expect(parseAccept(['application/a', 'application/b; q=0.5, application/c'])).toEqual(['application/a', 'application/b', 'application/c']);
    expect(accepts([], 'x/y')).toBe(true);
    expect(accepts(['*/*'], 'x/y')).toBe(true);
    expect(accepts(['x/z'], 'x/y')).toBe(false);
  });
});

describe('error table', () => {
  it('gives each code its spec status and renders the spec envelope', () => {
    expect(DEFAULT_STATUS.NAME_INVALID).toBe(400);
    expect(DEFAULT_STATUS.MANIFEST_UNKNOWN).toBe(404);
    expect(DEFAULT_STATUS.BLOB_UNKNOWN).toBe(404);
    expect(DEFAULT_STATUS.UNAUTHORIZED).toBe(401);
    expect(DEFAULT_STATUS.DENIED).toBe(403);
    expect(DEFAULT_STATUS.UNSUPPORTED).toBe(405);
    expect(DEFAULT_STATUS.TOOMANYREQUESTS).toBe(429);
    const err = new OciError('BLOB_UNKNOWN', 'nope', { detail: { digest: 'x' }, cause: new Error('secret internals') });
    expect(err.toBody()).toEqual({ errors: [{ code: 'BLOB_UNKNOWN', message: 'nope', detail: { digest: 'x' } }] });
    expect(JSON.stringify(err.toBody())).not.toContain('secret internals');
  });
});
