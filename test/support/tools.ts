import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** The apt-get line that installs every third-party tool the e2e suites drive. */
export const E2E_APT_INSTALL = 'apt-get install -y docker-registry skopeo containerd apache2-utils chromium fonts-dejavu-core';

/** Whether an e2e suite should run, and why not when it should not. */
export interface E2eGate {
  run: boolean;
  reason?: string;
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function isCi(): boolean {
  const ci = process.env.CI;
  // CI=false and CI=0 are how people switch the variable off locally.
  return ci !== undefined && ci !== '' && ci !== '0' && ci.toLowerCase() !== 'false';
}

/** Returns the names from `names` that are not executable anywhere on PATH. */
export function missingTools(names: string[]): string[] {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter((d) => d !== '');
  return names.filter((name) => !dirs.some((dir) => isExecutable(join(dir, name))));
}

/** Decides whether an e2e suite runs: skips with a reason locally, but throws in CI so a missing tool never passes silently. */
export function e2eGate(names: string[]): E2eGate {
  const missing = missingTools(names);
  if (missing.length === 0) return { run: true };
  const reason = `missing tools: ${missing.join(', ')} (install with: ${E2E_APT_INSTALL})`;
  if (isCi()) throw new Error(`e2e tests need tools that are not on PATH in CI; ${reason}`);
  return { run: false, reason };
}
