import { describe, expect, it } from 'vitest';
import { DEFAULT_STATUS, OciError } from '../../../src/oci/errors.js';

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
