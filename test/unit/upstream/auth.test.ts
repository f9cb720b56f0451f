import { describe, expect, it } from 'vitest';
import { realmMayReceiveCredentials } from '../../../src/upstream/auth.js';

describe('token realms', () => {
  it('sends credentials only to token realms on the upstream registrable domain', () => {
    expect(realmMayReceiveCredentials(new URL('https://auth.docker.io/token'), new URL('https://registry-1.docker.io'))).toBe(true);
    expect(realmMayReceiveCredentials(new URL('https://evil.example/token'), new URL('https://registry-1.docker.io'))).toBe(false);
    expect(realmMayReceiveCredentials(new URL('http://auth.docker.io/token'), new URL('https://registry-1.docker.io'))).toBe(false);
    // Without a registrable domain (IP addresses, single-label names) only the same scheme, host and port qualify.
    expect(realmMayReceiveCredentials(new URL('http://127.0.0.1:2/token'), new URL('http://127.0.0.1:2'))).toBe(true);
    expect(realmMayReceiveCredentials(new URL('http://127.0.0.1:1/token'), new URL('http://127.0.0.1:2'))).toBe(false);
    expect(realmMayReceiveCredentials(new URL('https://10.0.0.5/token'), new URL('https://10.0.0.5:443'))).toBe(true);
    expect(realmMayReceiveCredentials(new URL('https://10.0.0.5:8443/token'), new URL('https://10.0.0.5'))).toBe(false);
    expect(realmMayReceiveCredentials(new URL('https://127.0.0.1:2/token'), new URL('http://127.0.0.1:2'))).toBe(false);
    expect(realmMayReceiveCredentials(new URL('http://[::1]:1/token'), new URL('http://[::1]:2'))).toBe(false);
    expect(realmMayReceiveCredentials(new URL('http://registry:1/token'), new URL('http://registry:2'))).toBe(false);
    expect(realmMayReceiveCredentials(new URL('http://localhost:1/token'), new URL('http://127.0.0.1:2'))).toBe(false);
  });
});
