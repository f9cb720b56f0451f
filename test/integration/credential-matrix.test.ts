import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { preloadImage } from '../../src/preload/preload.js';
import { startCache, type TestCache } from '../support/cache-server.js';
import { FakeUpstream, makeImage, type FakeImage } from '../support/fake-upstream.js';
import { call, errorCode } from '../support/http-client.js';
import { writeOciLayout } from '../support/oci-layout.js';
import { cacheToken } from '../support/registry-auth.js';

const A = { username: 'tenant-a', password: 'pw-a-7f3e' };
const B = { username: 'tenant-b', password: 'pw-b-91c2' };
const C = { username: 'tenant-c', password: 'pw-c-wrong' };

type Policy = 'NeverVerify' | 'NeverVerifyPreloadedImages' | 'NeverVerifyAllowListedImages' | 'AlwaysVerify';
type ImageState = 'preloaded' | 'pulled anonymously' | 'pulled with A';
type Client = 'no credentials' | 'A' | 'B (valid upstream)' | 'C (invalid upstream)';
/** served, or the status the client gets; and how many upstream requests the request made. */
type Expect = { served: boolean; status?: number; upstream: number };

const SERVE0: Expect = { served: true, upstream: 0 };
/** Verification: one upstream GET of the manifest by digest whose body must hash to it (possession), never of a blob. */
const VERIFY_OK: Expect = { served: true, upstream: 1 };
const VERIFY_DENIED: Expect = { served: false, status: 401, upstream: 1 };
/**
 * No Authorization at all, and the record does not make the image anonymous: tried upstream anonymously (the GET an
 * unknown digest would get, so nothing tells stored from unknown), refused, then challenged for credentials.
 */
const CHALLENGE: Expect = { served: false, status: 401, upstream: 1 };

const verifyRow: Record<Client, Expect> = { 'no credentials': CHALLENGE, A: VERIFY_OK, 'B (valid upstream)': VERIFY_OK, 'C (invalid upstream)': VERIFY_DENIED };
const pulledWithARow: Record<Client, Expect> = { 'no credentials': CHALLENGE, A: SERVE0, 'B (valid upstream)': VERIFY_OK, 'C (invalid upstream)': VERIFY_DENIED };
const allServed: Record<Client, Expect> = { 'no credentials': SERVE0, A: SERVE0, 'B (valid upstream)': SERVE0, 'C (invalid upstream)': SERVE0 };

const EXPECTED: Record<Policy, Record<ImageState, Record<Client, Expect>>> = {
  NeverVerify: { preloaded: allServed, 'pulled anonymously': allServed, 'pulled with A': allServed },
  NeverVerifyPreloadedImages: { preloaded: allServed, 'pulled anonymously': allServed, 'pulled with A': pulledWithARow },
  // The preloaded image is not on the allowlist here; the allowlist itself is tested separately.
  NeverVerifyAllowListedImages: { preloaded: verifyRow, 'pulled anonymously': allServed, 'pulled with A': pulledWithARow },
  AlwaysVerify: { preloaded: verifyRow, 'pulled anonymously': allServed, 'pulled with A': pulledWithARow },
};

const CLIENTS: Client[] = ['no credentials', 'A', 'B (valid upstream)', 'C (invalid upstream)'];
const STATES: ImageState[] = ['preloaded', 'pulled anonymously', 'pulled with A'];
const REPOS: Record<ImageState, string> = { preloaded: 'private/pre', 'pulled anonymously': 'public/app', 'pulled with A': 'private/app' };

describe.each(Object.keys(EXPECTED) as Policy[])('policy %s', (policy) => {
  let upstream: FakeUpstream;
  let cache: TestCache;
  let work: string;
  const images: Record<ImageState, FakeImage> = {
    preloaded: makeImage([2000, 3000]),
    'pulled anonymously': makeImage([1500]),
    'pulled with A': makeImage([2500, 100]),
  };
  const summary: string[] = [];

  beforeAll(async () => {
    upstream = await new FakeUpstream().start();
    upstream.auth = { kind: 'basic', users: { [A.username]: A.password, [B.username]: B.password }, publicRepos: ['public/app'] };
    for (const s of STATES) upstream.push(REPOS[s], 'v1', images[s]);
    work = await mkdtemp(join(tmpdir(), 'rc-matrix-'));
    cache = await startCache(
      { [upstream.host]: upstream.url },
      { imagePullCredentialsVerificationPolicy: policy, preloadedImagesVerificationAllowlist: ['registry.example/other/*'] },
    );
    await writeOciLayout(join(work, 'layout'), images.preloaded);
    await preloadImage(join(work, 'layout'), `${upstream.host}/private/pre:v1`, cache.services);
    const anon = await call(manifestUrl('pulled anonymously'));
    expect(anon.status).toBe(200);
    const tokenA = await cacheToken(cache.url, upstream.host, REPOS['pulled with A'], A);
    const withA = await call(manifestUrl('pulled with A'), { headers: { authorization: `Bearer ${tokenA}` } });
    expect(withA.status).toBe(200);
  });

  afterAll(async () => {
    console.info(`[matrix] ${policy}:\n${summary.join('\n')}`);
    await cache.stop();
    await upstream.stop();
    await rm(work, { recursive: true, force: true });
  });

  function manifestUrl(state: ImageState): string {
    return `${cache.url}/v2/${REPOS[state]}/manifests/${images[state].manifestDigest}?ns=${upstream.host}`;
  }

  async function authHeader(client: Client, repo: string): Promise<Record<string, string>> {
    const user = client === 'A' ? A : client === 'B (valid upstream)' ? B : client === 'C (invalid upstream)' ? C : undefined;
    if (!user) return {};
    return { authorization: `Bearer ${await cacheToken(cache.url, upstream.host, repo, user)}` };
  }

  for (const state of STATES) {
    for (const client of CLIENTS) {
      const expected = EXPECTED[policy][state][client];
      it(`${state} image, client with ${client}: ${expected.served ? 'served' : `refused ${expected.status}`}, ${expected.upstream} upstream request(s)`, async () => {
        const headers = await authHeader(client, REPOS[state]);
        const before = upstream.requests.length;
        const res = await call(manifestUrl(state), { headers });
        const made = upstream.requests.slice(before);
        summary.push(`  ${state.padEnd(18)} × ${client.padEnd(20)} → ${res.status} (${made.length} upstream: ${made.map((r) => `${r.method} ${r.path.split('/').pop()?.slice(0, 14)}`).join(', ') || '-'})`);
        expect(made.every((r) => r.method === 'GET' && r.path.includes('/manifests/')), 'verification fetches only the manifest, never a blob').toBe(true);
        expect(made).toHaveLength(expected.upstream);
        if (expected.served) {
          expect(res.status).toBe(200);
          expect(res.body.equals(images[state].manifest)).toBe(true);
        } else {
          expect(res.status).toBe(expected.status);
          expect(errorCode(res)).toBe('UNAUTHORIZED');
          if (client === 'no credentials') expect(res.headers['www-authenticate']).toContain(`realm="${cache.url}/auth/token?ns=`);
        }
      });
    }
  }
});
