import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';

function capture(): { lines: Record<string, unknown>[]; log: ReturnType<typeof createLogger> } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { lines, log: createLogger('info', sink) };
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
