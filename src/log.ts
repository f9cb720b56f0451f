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

/** The logger shape fastify gives each request (`request.log`). */
export interface RequestLogger {
  level: string;
  fatal: pino.LogFn;
  error: pino.LogFn;
  warn: pino.LogFn;
  info: pino.LogFn;
  debug: pino.LogFn;
  trace: pino.LogFn;
  silent: pino.LogFn;
  child(bindings: pino.Bindings, options?: pino.ChildLoggerOptions): RequestLogger;
}

/**
 * fastify's `childLoggerFactory`: a request's logger that makes its pino child (request id bound, bindings redacted)
 * only when a line is written at an enabled level. Built eagerly it cost 2-3 % of a warm manifest hit's CPU, for a
 * child that at `logLevel: warn` writes nothing. A route's own level or serializers make the child at once.
 */
export function lazyChildLogger(parent: Logger, bindings: pino.Bindings, options: pino.ChildLoggerOptions): RequestLogger {
  if (options.level !== undefined || options.serializers !== undefined) return parent.child(bindings, options);
  return new LazyChildLogger(parent, bindings);
}

class LazyChildLogger implements RequestLogger {
  private made: Logger | undefined;

  // Methods on the prototype, not arrow fields: seven closures per request were garbage on every hit.
  fatal(...args: unknown[]): void {
    this.write('fatal', args);
  }

  error(...args: unknown[]): void {
    this.write('error', args);
  }

  warn(...args: unknown[]): void {
    this.write('warn', args);
  }

  info(...args: unknown[]): void {
    this.write('info', args);
  }

  debug(...args: unknown[]): void {
    this.write('debug', args);
  }

  trace(...args: unknown[]): void {
    this.write('trace', args);
  }

  silent(): void {}

  constructor(
    private readonly parent: Logger,
    private readonly bindings: pino.Bindings,
  ) {}

  get level(): string {
    return (this.made ?? this.parent).level;
  }

  set level(level: string) {
    this.logger().level = level;
  }

  child(bindings: pino.Bindings, options?: pino.ChildLoggerOptions): RequestLogger {
    return this.logger().child(bindings, options);
  }

  private write(level: pino.Level, args: unknown[]): void {
    if (!(this.made ?? this.parent).isLevelEnabled(level)) return;
    const logger = this.logger();
    Reflect.apply(logger[level], logger, args);
  }

  private logger(): Logger {
    this.made ??= this.parent.child(this.bindings);
    return this.made;
  }
}
