import { call, type TestResponse } from './http-client.js';

/** Gets a token from the cache's realm the way containerd does: a POSTed password grant (or an anonymous GET). */
export async function cacheToken(cacheUrl: string, ns: string, repository: string, user?: { username: string; password: string }): Promise<string> {
  const realm = `${cacheUrl}/auth/token?ns=${encodeURIComponent(ns)}`;
  const scope = `repository:${repository}:pull`;
  let res: Response;
  if (user) {
    const body = new URLSearchParams({ grant_type: 'password', username: user.username, password: user.password, service: 'registry-cache', scope });
    res = await fetch(realm, { method: 'POST', body, headers: { 'content-type': 'application/x-www-form-urlencoded' } });
  } else {
    res = await fetch(`${realm}&service=registry-cache&scope=${encodeURIComponent(scope)}`);
  }
  if (res.status !== 200) throw new Error(`token endpoint answered ${res.status}`);
  return ((await res.json()) as { token: string }).token;
}

/** A client that follows the cache's Bearer challenge, like containerd: first without auth, then with a token. */
export async function pullLikeContainerd(
  url: string,
  ns: string,
  repository: string,
  user?: { username: string; password: string },
  method = 'GET',
): Promise<{ first: TestResponse; final: TestResponse }> {
  const first = await call(url, { method });
  if (first.status !== 401 || !String(first.headers['www-authenticate'] ?? '').startsWith('Bearer ')) return { first, final: first };
  const cacheUrl = /^(http:\/\/[^/]+)/.exec(url)?.[1] as string;
  const token = await cacheToken(cacheUrl, ns, repository, user);
  return { first, final: await call(url, { method, headers: { authorization: `Bearer ${token}` } }) };
}
