import { describe, expect, it } from 'vitest';
import { CredentialHasher } from '../../../src/policy/credential-hash.js';

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
