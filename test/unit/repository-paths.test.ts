import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NOISE_NOTE, commandLine, repositoryPath } from '../../bench/report.js';

const ROOT = resolve(import.meta.dirname, '../..');
/** A path that exists only on some machine: an absolute path to a home, work or temp directory, or the shared notes. */
const OUTSIDE = /(?:^|[\s(`'"=])\/(?:work|home|root|tmp|Users|var|opt|mnt)\/|shared\/reference/m;

describe('files that must refer only to the repository', () => {
  it.each(['.ci/run', 'bench/RESULTS.md', 'bench/RESULTS-pull-limit.md', 'bench/RESULTS-store-growth.md'])('%s names no path outside the repository', (file) => {
    expect(readFileSync(join(ROOT, file), 'utf8')).not.toMatch(OUTSIDE);
  });

  it('the bench report generator writes no machine path: its noise note, and the command line with --out outside the checkout', () => {
    expect(NOISE_NOTE).not.toMatch(OUTSIDE);
    expect(commandLine(['--scenario', 'pull-limit', '--out', '/tmp/pl'], { repoRoot: '/src/registry-cache', viaNpm: true })).toBe(
      'npm run bench -- --scenario pull-limit --out DIR',
    );
    expect(commandLine(['--out=/home/me/x'], { repoRoot: '/src/registry-cache', viaNpm: true })).toBe('npm run bench -- --out=DIR');
    expect(commandLine(['--out', '/src/registry-cache/bench/quick'], { repoRoot: '/src/registry-cache', viaNpm: true })).toBe('npm run bench -- --out bench/quick');
    expect(commandLine(['--quick'], { repoRoot: '/src/registry-cache', viaNpm: false, script: '/src/registry-cache/bench/out/bench/run.js' })).toBe(
      'node bench/out/bench/run.js --quick',
    );
  });

  it('names profiled files and a --cache-cli build by their path in the repository, a dependency by node_modules, anything else DIR', () => {
    const root = '/src/registry-cache';
    expect(repositoryPath('/src/registry-cache/src/cache/fill.ts', root)).toBe('src/cache/fill.ts');
    // node_modules may be a symlink into another checkout: the profile then holds the resolved path.
    expect(repositoryPath('/elsewhere/main/node_modules/fastify/lib/reply.js', root)).toBe('node_modules/fastify/lib/reply.js');
    expect(repositoryPath('/tmp/ab/dist/cli.js', root)).toBe('DIR');
    expect(repositoryPath('/src/registry-cache/bench/out/ab/dist/cli.js', root)).toBe('bench/out/ab/dist/cli.js');
  });
});
