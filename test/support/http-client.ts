import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';

/** A response read whole, or the error that cut it short. */
export interface TestResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** Set when the connection broke before the body completed. */
  error?: Error;
}

/** One request over a fresh socket (no pooling), reading the whole body. Never throws for a cut body. */
export function call(
  url: string,
  options: { method?: string; headers?: Record<string, string | string[]>; abortAfterBytes?: number } = {},
): Promise<TestResponse> {
  return new Promise((resolve, reject) => {
    // Keep the path exactly as written: WHATWG URL parsing would resolve `%2e%2e` before it reaches the server.
    const m = /^http:\/\/([^/:]+):(\d+)(\/.*)?$/.exec(url);
    if (!m) throw new Error(`not an http URL: ${url}`);
    const target = { host: m[1], port: Number(m[2]), path: m[3] ?? '/' };
    const req = httpRequest({ ...target, method: options.method ?? 'GET', headers: options.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      let received = 0;
      const done = (error?: Error): void => {
        const out: TestResponse = { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) };
        if (error) out.error = error;
        resolve(out);
      };
      res.on('data', (c: Buffer) => {
        chunks.push(c);
        received += c.length;
        if (options.abortAfterBytes !== undefined && received >= options.abortAfterBytes) {
          req.destroy();
          done(new Error('aborted by test'));
        }
      });
      res.on('end', () => {
        if (res.complete) done();
        else done(new Error('incomplete body'));
      });
      res.on('error', (err) => done(err));
      res.on('aborted', () => done(new Error('aborted')));
    });
    req.on('error', (err) => reject(err));
    req.end();
  });
}

/** Parses a JSON OCI error body. */
export function errorCode(res: TestResponse): string | undefined {
  try {
    return (JSON.parse(res.body.toString('utf8')) as { errors?: { code?: string }[] }).errors?.[0]?.code;
  } catch {
    return undefined;
  }
}

/** The `detail` of a JSON OCI error body (what the cache says about the cause: registry, class, reason). */
export function errorDetail(res: TestResponse): Record<string, unknown> | undefined {
  try {
    return (JSON.parse(res.body.toString('utf8')) as { errors?: { detail?: Record<string, unknown> }[] }).errors?.[0]?.detail;
  } catch {
    return undefined;
  }
}
