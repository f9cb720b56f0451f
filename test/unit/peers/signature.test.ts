import { describe, expect, it } from 'vitest';
import { PeerSigner } from '../../../src/peers/signature.js';

const secret = 'a cluster secret of enough length';
const request = { method: 'GET', path: '/peer/v1/blobs/sha256:abc', range: 'bytes=0-99' };

describe('peer request signatures', () => {
  it('accepts a signed request once and refuses its replay', () => {
    const signer = new PeerSigner(secret);
    const header = signer.sign(request);
    expect(new PeerSigner(secret).verify(request, header)).toBe('ok');
    const receiver = new PeerSigner(secret);
    expect(receiver.verify(request, header)).toBe('ok');
    expect(receiver.verify(request, header)).toBe('replayed');
  });

  it('refuses a missing, malformed, wrongly keyed or re-targeted signature', () => {
    const header = new PeerSigner(secret).sign(request);
    const receiver = new PeerSigner(secret);
    expect(receiver.verify(request, undefined)).toBe('missing');
    expect(receiver.verify(request, 'v1 t=1 n=00 s=00')).toBe('malformed');
    expect(new PeerSigner('another secret of enough length').verify(request, header)).toBe('bad-signature');
    expect(receiver.verify({ ...request, path: '/peer/v1/blobs/sha256:other' }, header)).toBe('bad-signature');
    expect(receiver.verify({ ...request, range: 'bytes=0-' }, header)).toBe('bad-signature');
    expect(receiver.verify({ ...request, method: 'HEAD' }, header)).toBe('bad-signature');
  });

  it('refuses signatures older or newer than the window', () => {
    let now = 1_000_000;
    const sender = new PeerSigner(secret, { now: () => now });
    const receiver = new PeerSigner(secret, { now: () => now });
    const old = sender.sign(request);
    now += 30_001;
    expect(receiver.verify(request, old)).toBe('expired');
    const future = sender.sign(request);
    now -= 30_002;
    expect(receiver.verify(request, future)).toBe('expired');
  });

  it('refuses a short secret at construction', () => {
    expect(() => new PeerSigner('short')).toThrow(/at least 16 bytes/);
  });
});
