import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/metrics.js';

function metrics(): Metrics {
  return new Metrics({ activeFills: () => 0, queuedPulls: () => 0, storeBytes: () => 0 });
}

describe('request counters', () => {
  it('shows every tallied increment, per label set, in each reading of the counter', async () => {
    const m = metrics();
    m.requestCounts.add(1, 'manifest', 'GET', '200');
    m.requestCounts.add(1, 'manifest', 'GET', '200');
    m.requestCounts.add(1, 'blob', 'HEAD', '404');
    m.bytesServedCounts.add(405, 'store');
    m.bytesServedCounts.add(95, 'store');
    const text = (await m.render()).body;
    expect(text).toContain('registry_cache_http_requests_total{route="manifest",method="GET",status="200"} 2');
    expect(text).toContain('registry_cache_http_requests_total{route="blob",method="HEAD",status="404"} 1');
    expect(text).toContain('registry_cache_bytes_served_total{source="store"} 500');

    // A later reading adds only what came since, and the counter's own reading (the status page's) sees it too.
    m.requestCounts.add(1, 'manifest', 'GET', '200');
    expect((await m.httpRequests.get()).values).toEqual([
      { labels: { route: 'manifest', method: 'GET', status: '200' }, value: 3 },
      { labels: { route: 'blob', method: 'HEAD', status: '404' }, value: 1 },
    ]);
    expect((await m.render()).body).toContain('registry_cache_http_requests_total{route="manifest",method="GET",status="200"} 3');
  });

  it('exposes no series for a label set before its first increment', async () => {
    const m = metrics();
    expect((await m.cacheResults.get()).values).toEqual([]);
    m.cacheResultCounts.add(1, 'manifest', 'hit');
    expect((await m.cacheResults.get()).values).toEqual([{ labels: { kind: 'manifest', result: 'hit' }, value: 1 }]);
  });
});
