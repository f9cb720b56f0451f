import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
const NODE = join(ROOT, 'node_modules/.bin/node');

/** Each subcommand cli.ts declares, with the block of options that follows it. */
function subcommands(): { name: string; block: string }[] {
  const source = readFileSync(join(ROOT, 'src/cli.ts'), 'utf8');
  return source
    .split(/(?=\.command\(')/)
    .slice(1)
    .map((block) => ({ name: /^\.command\('([a-z]+)'/.exec(block)?.[1] ?? '', block: block.split('.action(')[0] ?? '' }));
}

describe('README for someone with a fresh checkout', () => {
  it('shows a way to run registry-cache <command> from a checkout that works', () => {
    const alias = /alias registry-cache="\$PWD\/node_modules\/\.bin\/node \$PWD\/dist\/cli\.js"/.exec(README);
    expect(alias, 'README gives a shell alias for the CLI').not.toBeNull();
    const run = spawnSync(NODE, ['dist/cli.js', 'gc', '--help'], { cwd: ROOT, encoding: 'utf8' });
    expect(run.status).toBe(0);
    expect(run.stdout).toContain('Usage: registry-cache gc');
  });

  it('says every subcommand takes --config, and every one does', () => {
    const commands = subcommands();
    expect(commands.map((c) => c.name).sort()).toEqual(['check', 'gc', 'hosts', 'preload', 'records', 'serve', 'status', 'verify']);
    for (const c of commands) expect(c.block, c.name).toContain(".option('-c, --config <file>'");
    expect(README).toContain('Every command takes `--config FILE`');
  });

  it('says a registries map replaces the defaults and why /v2/ answers 401', () => {
    expect(README).toMatch(/`registries` replaces the default list/);
    expect(README).toMatch(/`GET \/v2\/` answers `401`/);
  });
});
