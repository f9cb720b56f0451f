import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type ServerOptions as HttpsOptions } from 'node:https';
import type { AddressInfo } from 'node:net';

/** A request the fake upstream received. */
export interface RecordedRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: IncomingMessage['headers'];
  /** performance.now() when the request arrived and when its response ended (or the socket closed). */
  startedAt: number;
  /** The client's source port: distinct ports mean distinct connections. */
  remotePort: number | undefined;
  endedAt?: number;
  /** The status the fake answered with, once it did. */
  status?: number;
}

/**
 * What to do instead of answering normally. Body faults (all but status, redirect and hang) apply to blob, manifest
 * and tags/list GET bodies; the headers (Content-Length included, unless the fault changes it) are the true ones.
 */
export type Fault =
  | { kind: 'status'; status: number; headers?: Record<string, string>; body?: string }
  /** Sends `afterBytes` bytes, then closes the connection (FIN). */
  | { kind: 'truncate'; afterBytes: number }
  /** The full length, with the byte at `at` (default: the last one) flipped. */
  | { kind: 'wrong-bytes'; at?: number }
  /** The body in `chunkBytes` pieces `delayMs` apart; with `flipAt`, that byte flipped. */
  | { kind: 'slow'; chunkBytes: number; delayMs: number; flipAt?: number }
  /**
   * The correct body with `Connection: close`, then FIN right after the last byte, as nginx answers the last request
   * of a keep-alive connection.
   */
  | { kind: 'connection-close' }
  /**
   * Announces `Content-Length` as the true length + `delta` (negative: short, positive: long) and sends the true body;
   * then `close` (FIN) or `hang` (keep the connection open, silent). A short one sends bytes past its Content-Length.
   */
  | { kind: 'content-length'; delta: number; then: 'close' | 'hang' }
  /** Sends `afterBytes` bytes, then resets the connection (RST). */
  | { kind: 'reset'; afterBytes: number }
  /** Sends `afterBytes` bytes, then stays silent with the connection open (until stop()). */
  | { kind: 'stall'; afterBytes: number }
  | { kind: 'redirect'; to: string }
  | { kind: 'hang' };

/** An image pushed into the fake upstream. */
export interface FakeImage {
  manifest: Buffer;
  manifestDigest: string;
  mediaType: string;
  blobs: { digest: string; bytes: Buffer }[];
}

/** sha256 digest string of bytes. */
export function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** Builds an OCI image manifest over random layers of the given sizes. */
export function makeImage(layerSizes: number[], mediaType = 'application/vnd.oci.image.manifest.v1+json'): FakeImage {
  return makeImageFrom(layerSizes.map((n) => randomBytes(n)), mediaType);
}

/** Builds an image manifest over the given layer bytes (so images can share layers). */
export function makeImageFrom(layers: Buffer[], mediaType = 'application/vnd.oci.image.manifest.v1+json'): FakeImage {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, nonce: randomBytes(8).toString('hex') }));
  const docker = mediaType.includes('docker');
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType,
      config: { mediaType: docker ? 'application/vnd.docker.container.image.v1+json' : 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
      layers: layers.map((l) => ({
        mediaType: docker ? 'application/vnd.docker.image.rootfs.diff.tar.gzip' : 'application/vnd.oci.image.layer.v1.tar+gzip',
        digest: sha256(l),
        size: l.length,
      })),
    }),
  );
  return {
    manifest,
    manifestDigest: sha256(manifest),
    mediaType,
    blobs: [config, ...layers].map((bytes) => ({ digest: sha256(bytes), bytes })),
  };
}

/** Auth the fake demands on `/v2/` requests. */
export type FakeAuth =
  | { kind: 'none' }
  /** `privateRepos`: anonymous tokens get 404 there (GHCR's answer to a client that may not see a repository). */
  | { kind: 'bearer'; users?: Record<string, string>; allowAnonymous?: boolean; realmOrigin?: string; expiresIn?: number; privateRepos?: string[] }
  /** `hideUnauthorized`: refuse wrong credentials with 404 instead of 401, as GHCR and Docker Hub do for repositories a client may not see. */
  | { kind: 'basic'; users: Record<string, string>; publicRepos?: string[]; hideUnauthorized?: boolean };

/**
 * A misbehaving (misconfigured, compromised or catch-all) registry: 200 to every manifest and blob HEAD, and GET
 * bodies that do not hash to the digest asked for, for content it does not hold.
 */
export interface EvilMode {
  /** Docker-Content-Digest a HEAD of a tag claims (a HEAD by digest echoes the digest). */
  tagDigest?: string;
}

/**
 * An in-process registry over a real socket: counts requests and injects faults that real registries do not
 * produce on demand (Bearer flows, truncated or wrong bodies, redirects, rate limits).
 */
export class FakeUpstream {
  readonly requests: RecordedRequest[] = [];
  readonly tokenRequests: RecordedRequest[] = [];
  private readonly manifests = new Map<string, { bytes: Buffer; mediaType: string }>();
  private readonly blobs = new Map<string, Buffer>();
  private readonly issuedTokens = new Map<string, { scope: string; user: string | undefined }>();
  private server: Server | undefined;
  auth: FakeAuth = { kind: 'none' };
  /** Return a fault for a request, or undefined to answer normally. */
  fault: (req: RecordedRequest) => Fault | undefined = () => undefined;
  /** false: answer tags/list whole, ignoring `n` and `last` (as distribution 2.8 does). */
  paginateTags = true;
  /** Set: behave as an evil upstream (see EvilMode). */
  evil: EvilMode | undefined = undefined;
  /** Answer `Range: bytes=N-` on blob GETs with a 206 (distribution does; the default answers 200 with it all). */
  ranges = false;
  /** Delay before answering manifest and blob requests, to widen race windows. */
  delayMs = 0;
  /** Set: answers wait until it resolves (a test opens it once the race it needs is set up; no timing involved). */
  gate: Promise<void> | undefined = undefined;
  url = '';
  host = '';

  /** Starts listening on 127.0.0.1, an ephemeral port; with `tls`, over HTTPS (e.g. requiring client certificates). */
  async start(options: { tls?: HttpsOptions } = {}): Promise<this> {
    const handler = (req: IncomingMessage, res: ServerResponse): void => {
      this.handle(req, res).catch((err: unknown) => {
        res.destroy(err as Error);
      });
    };
    this.server = options.tls ? createHttpsServer(options.tls, handler) : createServer(handler);
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    const { port } = this.server.address() as AddressInfo;
    this.host = `127.0.0.1:${port}`;
    this.url = `${options.tls ? 'https' : 'http'}://${this.host}`;
    return this;
  }

  /** Stops the server and drops open connections. */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Adds an image to `repo` under `tag`. */
  push(repo: string, tag: string | undefined, image: FakeImage): void {
    this.manifests.set(`${repo}@${image.manifestDigest}`, { bytes: image.manifest, mediaType: image.mediaType });
    if (tag) this.manifests.set(`${repo}:${tag}`, { bytes: image.manifest, mediaType: image.mediaType });
    for (const b of image.blobs) this.blobs.set(`${repo}@${b.digest}`, b.bytes);
  }

  /** Adds a raw manifest (e.g. an index) to `repo`. */
  pushManifest(repo: string, tag: string | undefined, bytes: Buffer, mediaType: string): string {
    const digest = sha256(bytes);
    this.manifests.set(`${repo}@${digest}`, { bytes, mediaType });
    if (tag) this.manifests.set(`${repo}:${tag}`, { bytes, mediaType });
    return digest;
  }

  /** Requests matching a method and a path pattern. */
  count(method: string, pathPattern: RegExp): number {
    return this.requests.filter((r) => r.method === method && pathPattern.test(r.path)).length;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.url);
    const recorded: RecordedRequest = {
      method: req.method ?? 'GET',
      path: url.pathname,
      query: url.searchParams,
      headers: req.headers,
      startedAt: performance.now(),
      remotePort: req.socket.remotePort,
    };
    res.once('close', () => {
      recorded.endedAt = performance.now();
      recorded.status = res.statusCode;
    });
    if (url.pathname === '/token') {
      this.tokenRequests.push(recorded);
      return this.serveToken(recorded, res);
    }
    this.requests.push(recorded);
    if (!this.authorized(recorded, res)) return;
    const fault = this.fault(recorded);
    if (fault?.kind === 'status') {
      res.writeHead(fault.status, { 'content-type': 'application/json', ...(fault.headers ?? {}) });
      res.end(fault.body ?? JSON.stringify({ errors: [{ code: 'UNKNOWN', message: 'injected' }] }));
      return;
    }
    if (fault?.kind === 'redirect') {
      res.writeHead(307, { location: fault.to });
      res.end();
      return;
    }
    if (fault?.kind === 'hang') return; // never answer
    if (this.delayMs > 0) await sleep(this.delayMs);
    if (this.gate) await this.gate;
    if (this.evil && this.answerEvil(url.pathname, req, res, this.evil)) return;

    if (url.pathname === '/v2/' || url.pathname === '/v2') {
      res.writeHead(200, { 'content-type': 'application/json', 'docker-distribution-api-version': 'registry/2.0' });
      res.end('{}');
      return;
    }
    let m = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(url.pathname);
    if (m) {
      const ref = m[2] as string;
      const key = ref.includes(':') ? `${m[1]}@${ref}` : `${m[1]}:${ref}`;
      const manifest = this.manifests.get(key);
      if (!manifest) return notFound(res, 'MANIFEST_UNKNOWN');
      return this.sendBody(req, res, manifest.bytes, { 'content-type': manifest.mediaType, 'docker-content-digest': sha256(manifest.bytes) }, fault);
    }
    m = /^\/v2\/(.+)\/blobs\/([^/]+)$/.exec(url.pathname);
    if (m) {
      const bytes = this.blobs.get(`${m[1]}@${m[2]}`);
      if (!bytes) return notFound(res, 'BLOB_UNKNOWN');
      const from = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
      if (this.ranges && from && !fault && req.method === 'GET' && Number(from[1]) < bytes.length) {
        const start = Number(from[1]);
        res.writeHead(206, { 'content-type': 'application/octet-stream', 'docker-content-digest': m[2] as string, 'content-length': bytes.length - start, 'content-range': `bytes ${start}-${bytes.length - 1}/${bytes.length}` });
        return void res.end(bytes.subarray(start));
      }
      return this.sendBody(req, res, bytes, { 'content-type': 'application/octet-stream', 'docker-content-digest': m[2] as string }, fault);
    }
    m = /^\/v2\/(.+)\/tags\/list$/.exec(url.pathname);
    if (m) {
      const prefix = `${m[1]}:`;
      let tags = [...this.manifests.keys()].filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length)).sort();
      const last = this.paginateTags ? url.searchParams.get('last') : null;
      if (last) tags = tags.filter((t) => t > last);
      const n = this.paginateTags ? url.searchParams.get('n') : null;
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if (n && tags.length > Number(n)) {
        tags = tags.slice(0, Number(n));
        headers.link = `</v2/${m[1]}/tags/list?n=${n}&last=${tags[tags.length - 1]}>; rel="next"`;
      }
      return this.sendBody(req, res, Buffer.from(JSON.stringify({ name: m[1], tags })), headers, fault);
    }
    notFound(res, 'NAME_UNKNOWN');
  }

  /** The evil mode's answers; false for requests it answers like an honest registry. */
  private answerEvil(path: string, req: IncomingMessage, res: ServerResponse, evil: EvilMode): boolean {
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(path);
    if (!m) return false;
    const [, repo, kind, ref] = m as unknown as [string, string, string, string];
    const byDigest = ref.includes(':');
    if (req.method === 'HEAD') {
      const digest = byDigest ? ref : (evil.tagDigest ?? sha256(Buffer.from(ref)));
      const type = kind === 'manifests' ? 'application/vnd.oci.image.manifest.v1+json' : 'application/octet-stream';
      res.writeHead(200, { 'content-type': type, 'content-length': 1234, 'docker-content-digest': digest });
      res.end();
      return true;
    }
    const held = kind === 'manifests' ? this.manifests.has(byDigest ? `${repo}@${ref}` : `${repo}:${ref}`) : this.blobs.has(`${repo}@${ref}`);
    if (held || !byDigest) return false;
    // Claims to hold what it does not: a body of its own under the digest asked for.
    const junk = kind === 'manifests' ? makeImage([16]).manifest : randomBytes(1234);
    const type = kind === 'manifests' ? 'application/vnd.oci.image.manifest.v1+json' : 'application/octet-stream';
    res.writeHead(200, { 'content-type': type, 'content-length': junk.length, 'docker-content-digest': ref });
    res.end(junk);
    return true;
  }

  /** A 200 with `bytes` (headers only for HEAD), or the body fault. */
  private async sendBody(req: IncomingMessage, res: ServerResponse, bytes: Buffer, headers: Record<string, string>, fault: Fault | undefined): Promise<void> {
    const length = fault?.kind === 'content-length' ? bytes.length + fault.delta : bytes.length;
    res.writeHead(200, { ...headers, 'content-length': length, ...(fault?.kind === 'connection-close' ? { connection: 'close' } : {}) });
    if (req.method === 'HEAD') return void res.end();
    switch (fault?.kind) {
      case 'truncate':
        res.write(bytes.subarray(0, fault.afterBytes));
        await sleep(20);
        res.destroy();
        return;
      case 'wrong-bytes':
        res.end(flipped(bytes, fault.at ?? bytes.length - 1));
        return;
      case 'slow':
        if (fault.flipAt !== undefined) bytes = flipped(bytes, fault.flipAt);
        for (let i = 0; i < bytes.length; i += fault.chunkBytes) {
          if (res.destroyed) return;
          const last = i + fault.chunkBytes >= bytes.length;
          // The last chunk ends the response at once: a client that knows Content-Length is done when it arrives.
          if (last) return void res.end(bytes.subarray(i));
          res.write(bytes.subarray(i, i + fault.chunkBytes));
          await sleep(fault.delayMs);
        }
        res.end();
        return;
      case 'connection-close':
        // Node's server ends the socket (FIN) right after the response because of the Connection header.
        res.end(bytes);
        return;
      case 'content-length':
        // Straight to the socket: bytes past the announced length go out unframed, as a broken upstream's would.
        res.flushHeaders();
        res.socket?.write(bytes);
        if (fault.then === 'close') res.socket?.end();
        return;
      case 'reset':
        res.write(bytes.subarray(0, fault.afterBytes));
        await new Promise<void>((resolve) => res.socket?.write('', () => resolve()) ?? resolve());
        res.socket?.resetAndDestroy();
        return;
      case 'stall':
        res.write(bytes.subarray(0, fault.afterBytes));
        return;
      default:
        res.end(bytes);
    }
  }

  private authorized(req: RecordedRequest, res: ServerResponse): boolean {
    const auth = this.auth;
    if (auth.kind === 'none') return true;
    const header = req.headers.authorization ?? '';
    if (auth.kind === 'basic') {
      const user = checkBasic(header, auth.users);
      if (user) return true;
      const repo = /^\/v2\/(.+)\/(manifests|blobs|tags)\//.exec(req.path)?.[1];
      if (!header && repo && auth.publicRepos?.includes(repo)) return true;
      if (auth.hideUnauthorized && header && repo) {
        notFound(res, 'NAME_UNKNOWN');
        return false;
      }
      res.writeHead(401, { 'www-authenticate': 'Basic realm="fake"', 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'auth required' }] }));
      return false;
    }
    const token = header.startsWith('Bearer ') ? header.slice(7) : '';
    const repo = /^\/v2\/(.+)\/(manifests|blobs|tags)\//.exec(req.path)?.[1];
    const issued = token ? this.issuedTokens.get(token) : undefined;
    if (issued) {
      if (issued.user === undefined && repo && auth.privateRepos?.includes(repo)) {
        notFound(res, 'NAME_UNKNOWN');
        return false;
      }
      return true;
    }
    const realm = `${auth.realmOrigin ?? this.url}/token`;
    const scope = repo ? `,scope="repository:${repo}:pull"` : '';
    res.writeHead(401, { 'www-authenticate': `Bearer realm="${realm}",service="fake-registry"${scope}`, 'content-type': 'application/json' });
    res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'token required' }] }));
    return false;
  }

  private serveToken(req: RecordedRequest, res: ServerResponse): void {
    const auth = this.auth;
    if (auth.kind !== 'bearer') return notFound(res, 'NAME_UNKNOWN');
    const header = req.headers.authorization;
    let user: string | undefined;
    if (header) {
      user = checkBasic(header, auth.users ?? {});
      if (!user) {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end('{"details":"bad credentials"}');
        return;
      }
    } else if (auth.allowAnonymous === false) {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end('{"details":"credentials required"}');
      return;
    }
    const token = randomBytes(16).toString('hex');
    this.issuedTokens.set(token, { scope: req.query.get('scope') ?? '', user });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token, expires_in: auth.expiresIn ?? 300 }));
  }
}

function checkBasic(header: string, users: Record<string, string>): string | undefined {
  if (!header.startsWith('Basic ')) return undefined;
  const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  const user = decoded.slice(0, i);
  return i > 0 && users[user] === decoded.slice(i + 1) ? user : undefined;
}

/** A copy of `bytes` with the byte at `at` inverted. */
function flipped(bytes: Buffer, at: number): Buffer {
  const copy = Buffer.from(bytes);
  copy[at] = (copy[at] ?? 0) ^ 0xff;
  return copy;
}

function notFound(res: ServerResponse, code: string): void {
  res.writeHead(404, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ errors: [{ code, message: 'not found' }] }));
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
