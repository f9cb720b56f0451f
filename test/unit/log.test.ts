import { Writable } from 'node:stream';
import { describe, expect, it, vi } from 'vitest';
import { createLogger, lazyChildLogger } from '../../src/log.js';

function capture(level = 'info'): { lines: Record<string, unknown>[]; log: ReturnType<typeof createLogger> } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { lines, log: createLogger(level, sink) };
}

describe('logging errors', () => {
  it('logs an error whose message is empty (AggregateError of a dual-stack connect) with a message built from its parts', () => {
    const { lines, log } = capture();
    const refused = Object.assign(new AggregateError([new Error('connect ECONNREFUSED ::1:5000'), new Error('connect ECONNREFUSED 127.0.0.1:5000')], ''), {
      code: 'ECONNREFUSED',
    });
    log.warn({ err: refused }, 'upstream endpoint failed');
    const err = lines[0]?.err as { type?: string; message?: string; code?: string };
    expect(err.type).toBe('AggregateError');
    expect(err.message).toBe('ECONNREFUSED: connect ECONNREFUSED ::1:5000; connect ECONNREFUSED 127.0.0.1:5000');
    expect(err.code).toBe('ECONNREFUSED');
  });

  it('logs a summary object under err as it is, without a made-up type and an empty stack', () => {
    const { lines, log } = capture();
    log.warn({ err: { code: 'UNAVAILABLE', message: 'upstream x is unreachable' } }, 'serving last known digest');
    log.warn({ err: { message: '' } }, 'nothing to say');
    expect(lines[0]?.err).toEqual({ code: 'UNAVAILABLE', message: 'upstream x is unreachable' });
    expect(lines[1]?.err).toEqual({ message: '(no message)' });
  });

  it('keeps an Error with a message as pino serializes it, stack included', () => {
    const { lines, log } = capture();
    log.error({ err: Object.assign(new Error('disk full'), { code: 'ENOSPC' }) }, 'eviction failed');
    expect(lines[0]?.err).toMatchObject({ type: 'Error', message: 'disk full', code: 'ENOSPC' });
    expect((lines[0]?.err as { stack: string }).stack).toContain('Error: disk full');
  });
});

describe('request loggers', () => {
  it('makes the pino child of a request only when a line is written at an enabled level, with the request id bound', () => {
    const { lines, log } = capture('warn');
    const children = vi.spyOn(log, 'child');
    const requestLog = lazyChildLogger(log, { reqId: 'req-7' }, {});
    requestLog.info({ path: '/v2/a/manifests/x' }, 'request');
    requestLog.debug('detail');
    expect(children).not.toHaveBeenCalled();
    expect(requestLog.level).toBe('warn');
    requestLog.warn({ code: 'UNAVAILABLE' }, 'request failed');
    requestLog.error('and again');
    expect(children).toHaveBeenCalledTimes(1);
    expect(lines).toMatchObject([
      { level: 40, reqId: 'req-7', code: 'UNAVAILABLE', msg: 'request failed' },
      { level: 50, reqId: 'req-7', msg: 'and again' },
    ]);
  });

  it('makes the child at once for a route with its own level, and lets a request logger make children', () => {
    const { lines, log } = capture('warn');
    const requestLog = lazyChildLogger(log, { reqId: 'req-8' }, { level: 'info' });
    requestLog.info('route at info');
    requestLog.child({ part: 'x' }).warn('from a child');
    expect(lines).toMatchObject([
      { level: 30, reqId: 'req-8', msg: 'route at info' },
      { level: 40, reqId: 'req-8', part: 'x', msg: 'from a child' },
    ]);
  });
});
