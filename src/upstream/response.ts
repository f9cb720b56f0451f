import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import { errorForBodyFailure, errorForUpstreamStatus, type UpstreamSubject } from './errors.js';
import { firstHeader } from '../oci/content-headers.js';
import type { OciError } from '../oci/errors.js';

// The one home of what every upstream answer needs (status check, capped read, drain): the client, the token realm
// and the caches use these rather than copies of their own.

/** An upstream answer; the caller must consume or destroy `body`. */
export interface UpstreamResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Readable;
  /** Final URL after redirects (for logs). */
  url: URL;
}

/** Consumes a body we do not need so its connection returns to the pool. */
export async function drain(body: Readable): Promise<void> {
  const dump = (body as unknown as { dump?: () => Promise<void> }).dump;
  if (typeof dump === 'function') {
    await dump.call(body).catch(() => undefined);
    return;
  }
  body.resume();
  body.destroy();
}

/** Passes an upstream answer with an expected status through; anything else is drained and becomes its OCI error. */
export async function expectStatus(res: UpstreamResponse, ok: readonly number[], subject: UpstreamSubject, registry: string): Promise<UpstreamResponse> {
  if (ok.includes(res.status)) return res;
  await drain(res.body);
  throw errorForUpstreamStatus(res.status, subject, registry, firstHeader(res.headers['retry-after']));
}

/**
 * Reads a small upstream body whole, at most `limit` bytes: past it the body is destroyed and `tooLarge` thrown.
 * A body that breaks off becomes the body-failure error of the one failure table (502, or 504 for a stall).
 */
export async function readCapped(body: AsyncIterable<Buffer> & { destroy(): void }, limit: number, registry: string, tooLarge: () => OciError): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of body) {
      total += chunk.length;
      if (total > limit) {
        body.destroy();
        throw tooLarge();
      }
      chunks.push(chunk);
    }
  } catch (err) {
    throw errorForBodyFailure(err, registry);
  }
  return Buffer.concat(chunks);
}
