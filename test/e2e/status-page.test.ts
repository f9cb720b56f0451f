import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage } from '../support/fake-upstream.js';
import { call, type TestResponse } from '../support/http-client.js';
import { e2eGate } from '../support/tools.js';

const gate = e2eGate(['chromium']);
if (!gate.run) console.warn(`skipping e2e status page tests: ${gate.reason}`);

/** Where screenshots go: kept by the test report (STATUS_SCREENSHOT_DIR), else test-results/ in the checkout. */
const SCREENSHOTS = process.env.STATUS_SCREENSHOT_DIR ?? join(import.meta.dirname, '..', '..', 'test-results');
const MIB = 1024 * 1024;

/** The value of the first download's progress bar, or -1 when none is shown. */
const progressValue = (page: Page): Promise<number> =>
  page.$eval('#pulls', (el) => {
    const bar = el.querySelector('progress[value]');
    return bar ? Number(bar.getAttribute('value')) : -1;
  });

describe.runIf(gate.run)('the status page in Chromium', () => {
  let upstream: FakeUpstream;
  let cache: TestCache & { opsUrl: string };
  let browser: Browser;
  let page: Page;
  const consoleErrors: string[] = [];
  const requested: string[] = [];

  beforeAll(async () => {
    upstream = await new FakeUpstream().start();
    cache = (await startCache({ [upstream.host]: upstream.url }, { metricsListen: '127.0.0.1:0', maxStorageBytes: '48Mi', imageGCHighThresholdPercent: 85, imageGCLowThresholdPercent: 80 })) as TestCache & { opsUrl: string };
    browser = await puppeteer.launch({
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: ['--no-sandbox', '--headless=new'],
    });
    page = await browser.newPage();
    await page.setViewport({ width: 1200, height: 1000 });
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    page.on('pageerror', (err) => consoleErrors.push(String(err)));
    page.on('request', (r) => requested.push(r.url()));
    await mkdir(SCREENSHOTS, { recursive: true });
  });

  afterAll(async () => {
    await browser?.close();
    await cache?.stop();
    await upstream?.stop();
  });

  it('loads without console errors, follows a 32 MiB download as it grows, then shows the new hit ratio and image', async () => {
    const image = makeImage([32 * MIB]);
    upstream.push('library/big', 'v1', image);
    const layer = image.blobs[1] as { digest: string; bytes: Buffer };
    // 128 chunks of 256 KiB, 60 ms apart: the download outlasts a few of the page's 2 s refreshes.
    upstream.fault = (req) => (req.path.endsWith(layer.digest) ? { kind: 'slow', chunkBytes: 256 * 1024, delayMs: 60 } : undefined);

    await page.goto(`${cache.opsUrl}/status`, { waitUntil: 'load' });
    expect(await page.$eval('#hit-ratio b', (el) => el.textContent)).toBe('–');
    expect(await page.$eval('#images', (el) => el.textContent)).toContain('The store is empty.');

    expect((await call(`${cache.url}/v2/library/big/manifests/v1?ns=${upstream.host}`)).status).toBe(200);
    const download: Promise<TestResponse> = call(`${cache.url}/v2/library/big/blobs/${layer.digest}?ns=${upstream.host}`);

    // A refresh shows the download; a later refresh shows more of it.
    // Expressions as strings: they run in the page, where `document` is (the tests compile without the DOM library).
    const progressAbove = (bytes: number): string => `Number(document.querySelector('#pulls progress[value]')?.getAttribute('value') ?? 0) > ${bytes}`;
    await page.waitForFunction(progressAbove(0), { timeout: 30_000, polling: 'mutation' });
    const first = await progressValue(page);
    const firstGenerated = await page.$eval('main', (el) => el.getAttribute('data-generated'));
    await page.waitForFunction(progressAbove(first), { timeout: 30_000, polling: 'mutation' });
    const second = await progressValue(page);
    expect(second).toBeGreaterThan(first);
    expect(await page.$eval('main', (el) => el.getAttribute('data-generated'))).not.toBe(firstGenerated);
    expect(await page.$eval('#pulls progress[value]', (el) => el.getAttribute('max'))).toBe(String(32 * MIB));
    const row = await page.$eval('#pulls tbody tr', (el) => el.textContent ?? '');
    expect(row).toContain(`${upstream.host}/library/big`);
    expect(row).toContain('upstream');
    await page.screenshot({ path: join(SCREENSHOTS, 'status-page-during-pull.png'), fullPage: true });

    const res = await download;
    expect(res.status).toBe(200);
    expect(res.body.length).toBe(32 * MIB);
    await cache.services.blobs.settle();
    // A second pull of the layer is a hit: the ratio moves off 0%, and the image is listed at its full size.
    expect((await call(`${cache.url}/v2/library/big/blobs/${layer.digest}?ns=${upstream.host}`)).status).toBe(200);
    await page.waitForFunction(
      `(() => {
        const ratio = document.querySelector('#hit-ratio b')?.textContent ?? '';
        const images = document.querySelector('#images')?.textContent ?? '';
        return ratio !== '–' && ratio !== '0.0%' && images.includes('32.0 MiB') && document.querySelector('#pulls progress') === null;
      })()`,
      { timeout: 30_000, polling: 'mutation' },
    );
    expect(await page.$eval('#images', (el) => el.textContent)).toContain(`${upstream.host}/library/big:v1`);
    await page.screenshot({ path: join(SCREENSHOTS, 'status-page-after-pull.png'), fullPage: true });

    expect(consoleErrors).toEqual([]);
    // Everything the page loaded or fetched came from the operations listener itself.
    expect(requested.length).toBeGreaterThan(2);
    for (const url of requested) expect(url.startsWith(`${cache.opsUrl}/`)).toBe(true);
  });
});
