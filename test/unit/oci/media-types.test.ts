import { describe, expect, it } from 'vitest';
import { accepts, parseAccept } from '../../../src/oci/media-types.js';

describe('Accept handling', () => {
  it('splits repeated and comma-joined Accept headers', () => {
    expect(parseAccept(['application/a', 'application/b; q=0.5, application/c'])).toEqual(['application/a', 'application/b', 'application/c']);
    expect(accepts([], 'x/y')).toBe(true);
    expect(accepts(['*/*'], 'x/y')).toBe(true);
    expect(accepts(['x/z'], 'x/y')).toBe(false);
  });
});
