/**
 * The kubelet's `config.json` key matching (pkg/credentialprovider URLsMatch): host parts are globs, one `*`
 * part per subdomain (equal part counts), ports must be equal, and the key's path is a prefix of the image path.
 */

interface HostPath {
  host: string;
  port: string;
  path: string;
}

/** Splits `[scheme://]host[:port][/path]` the way the kubelet's keyring normalizes keys. */
export function parseKey(key: string): HostPath | undefined {
  let rest = key.replace(/^https?:\/\//, '');
  const slash = rest.indexOf('/');
  let path = slash >= 0 ? rest.slice(slash) : '';
  rest = slash >= 0 ? rest.slice(0, slash) : rest;
  path = path.replace(/\/+$/, '');
  const m = /^([^:]+)(?::(\d+))?$/.exec(rest);
  if (!m) return undefined;
  let host = (m[1] as string).toLowerCase();
  // Docker's legacy key for Docker Hub.
  if (host === 'index.docker.io' || host === 'registry-1.docker.io') {
    host = 'docker.io';
    if (path === '/v1' || path === '/v2') path = '';
  }
  return { host, port: m[2] ?? '', path };
}

function globPart(glob: string, part: string): boolean {
  const re = new RegExp(`^${glob.replace(/[.+^${}()|\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
  return re.test(part);
}

/** Whether a config.json / matchImages key matches an image `registry/repository`. */
export function keyMatchesImage(key: string, image: string): boolean {
  const glob = parseKey(key);
  const target = parseKey(image);
  if (!glob || !target) return false;
  if (glob.port !== target.port) return false;
  const g = glob.host.split('.');
  const t = target.host.split('.');
  if (g.length !== t.length) return false;
  for (let i = 0; i < g.length; i++) if (!globPart(g[i] as string, t[i] as string)) return false;
  if (glob.path === '') return true;
  return target.path === glob.path || target.path.startsWith(`${glob.path}/`);
}
