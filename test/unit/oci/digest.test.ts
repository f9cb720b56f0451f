import { describe, expect, it } from 'vitest';
import { digestOf, parseDigest } from '../../../src/oci/digest.js';
import { codeOf } from '../../support/oci-error.js';

const HEX64 = 'a'.repeat(64);

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
