import pino, { type Logger } from 'pino';

/** Paths that could carry secrets; pino replaces them wherever a log object has them. */
const REDACT = [
  'authorization',
  'password',
  'token',
  'headers.authorization',
  'req.headers.authorization',
  'request.headers.authorization',
  '*.authorization',
  '*.password',
  '*.token',
  '*.access_token',
];

/** The process logger: pino JSON to stdout, secrets redacted. */
export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino({ level, redact: { paths: REDACT, censor: '[redacted]' }, base: { service: 'registry-cache' }, serializers: { err: serializeError } }, destination);
}

/**
 * `err` as an operator can read it. An Error keeps pino's form, but an empty message (Node's AggregateError for a
 * refused dual-stack connect has none) is rebuilt from its code and inner errors. A plain summary object stays as it
 * is: pino's serializer would add `"type":"Object"` and `"stack":""` to it.
 */
function serializeError(err: unknown): unknown {
  if (typeof err !== 'object' || err === null) return err;
  if (!(err instanceof Error)) {
    const summary = err as { message?: unknown };
    if (!('message' in summary)) return err;
    return { ...summary, message: typeof summary.message === 'string' && summary.message !== '' ? summary.message : '(no message)' };
  }
  const out = pino.stdSerializers.err(err) as { message: string };
  if (out.message === '') out.message = messageOf(err);
  return out;
}

/** A message for an Error whose own is empty: its code, then the messages of the errors it aggregates or wraps. */
function messageOf(err: Error): string {
  const code = (err as { code?: unknown }).code;
  const inner = err instanceof AggregateError ? err.errors : err.cause instanceof Error ? [err.cause] : [];
  const parts = inner.map((e: unknown) => (e instanceof Error ? e.message : String(e))).filter(Boolean);
  const text = [typeof code === 'string' ? code : '', parts.join('; ')].filter(Boolean).join(': ');
  return text || err.name || '(no message)';
}
