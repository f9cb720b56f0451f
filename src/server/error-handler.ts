import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { OciError, isOciError } from '../oci/errors.js';

/** The only place that writes an OCI error envelope. Logs the cause; never sends it. */
export function sendError(err: unknown, request: FastifyRequest, reply: FastifyReply): void {
  const oci = toOciError(err);
  if (oci.status >= 500) request.log.warn({ code: oci.code, status: oci.status, err: oci.cause ?? oci }, 'request failed');
  if (reply.sent || reply.raw.headersSent) {
    // A body already started: appending JSON would corrupt it. Cut the connection so the client sees a failure.
    reply.raw.destroy();
    return;
  }
  void reply
    .code(oci.status)
    .headers({ ...oci.headers, 'content-type': 'application/json; charset=utf-8', 'docker-distribution-api-version': 'registry/2.0' })
    .send(JSON.stringify(oci.toBody()));
}

/** Turns anything thrown into an OciError without leaking internals. */
export function toOciError(err: unknown): OciError {
  if (isOciError(err)) return err;
  const fe = err as Partial<FastifyError>;
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new OciError('UNSUPPORTED', fe.message ?? 'bad request', { status: fe.statusCode, cause: err });
  }
  return new OciError('UNKNOWN', 'internal error', { cause: err });
}
