import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { SharedBandwidth } from '../../../bench/bandwidth.js';
import { startCountingProxy, type CountingProxy } from '../../../bench/counting-proxy.js';
import { Teardown } from '../../../bench/teardown.js';

const KiB = 1024;

describe('the bench bandwidth limit', () => {
  it('books every stream on one link: the second stream waits behind the first, and an idle link earns little burst', () => {
    let now = 1000;
    const link = new SharedBandwidth(1024 * KiB, () => now, 20);
    // A fresh link is booked from 20 ms ago at most: the slack that makes up for late timers.
    expect(link.book(512 * KiB)).toBe(480);
    // Another stream's chunk at the same instant goes after the first one's.
    expect(link.book(512 * KiB)).toBe(980);
    now = 1400;
    expect(link.book(256 * KiB)).toBe(830);
    // Idle from 2230 to 5000: the next chunk still takes its full time, less the slack.
    now = 5000;
    expect(link.book(128 * KiB)).toBe(105);
    // A chunk smaller than the slack may go at once.
    now = 10_000;
    expect(link.book(10 * KiB)).toBe(0);
  });

  it('refuses a bandwidth that is not positive', () => {
    expect(() => new SharedBandwidth(0)).toThrow(/positive/);
  });

  describe('through the counting proxy', () => {
    let upstream: Server | undefined;
    let proxy: CountingProxy | undefined;
    const teardown = new Teardown();

    afterEach(async () => {
      await proxy?.close();
      await new Promise<void>((resolve) => (upstream ? upstream.close(() => resolve()) : resolve()));
      await teardown.runAll(() => undefined);
    });

    it('holds all responses together to the rate and counts the body bytes it sent', async () => {
      const body = Buffer.alloc(256 * KiB, 7);
      upstream = createServer((_req, res) => res.end(body));
      await new Promise<void>((resolve) => upstream?.listen(0, '127.0.0.1', resolve));
      const port = (upstream.address() as AddressInfo).port;
      proxy = await startCountingProxy(`http://127.0.0.1:${port}`, teardown, { bandwidth: new SharedBandwidth(1024 * KiB) });
      const url = `${proxy.url}/v2/x/blobs/sha256:0`;
      const get = (): Promise<number> =>
        new Promise((resolve, reject) => {
          request(url, (res) => {
            let n = 0;
            res.on('data', (c: Buffer) => (n += c.length));
            res.once('end', () => resolve(n));
            res.once('error', reject);
          })
            .once('error', reject)
            .end();
        });
      const start = performance.now();
      const sizes = await Promise.all([get(), get()]);
      const elapsed = performance.now() - start;
      expect(sizes).toEqual([body.length, body.length]);
      // 512 KiB at 1 MiB/s together: at least half a second, less the 20 ms slack (and a millisecond of timer error).
      expect(elapsed).toBeGreaterThanOrEqual(479);
      expect(proxy.counts()).toMatchObject({ total: 2, responseBytes: 2 * body.length });
      expect(proxy.counts().byRequest.get('GET /v2/x/blobs/sha256:0')).toBe(2);
    });
  });
});
