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
  return pino({ level, redact: { paths: REDACT, censor: '[redacted]' }, base: { service: 'registry-cache' } }, destination);
}
