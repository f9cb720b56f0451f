import { describe, expect, it } from 'vitest';
import { accepts, parseAccept } from '../../../src/oci/media-types.js';

describe('Accept handling', () => {
  it('splits repeated and comma-joined Accept headers', () => {
    expect(parseAccept(['application/a', 'application/b; q=0.5, application/c'])).toEqual(['application/a', 'application/b', 'application/c']);
    expect(accepts([], 'x/y')).toBe(true);
    expect(accepts(['*/*'], 'x/y')).toBe(true);
    expect(accepts(['x/z'], 'x/y')).toBe(false);
  });

  it('answers a repeated header from its last parse and a different one afresh', () => {
    const first = parseAccept('application/A; q=1, application/b');
    expect(parseAccept('application/A; q=1, application/b')).toBe(first);
    expect(first).toEqual(['application/a', 'application/b']);
    expect(parseAccept('application/c')).toEqual(['application/c']);
    expect(parseAccept(['application/A; q=1, application/b'])).toEqual(['application/a', 'application/b']);
    expect(parseAccept(undefined)).toEqual([]);
    expect(Object.isFrozen(first)).toBe(true);
  });
});
