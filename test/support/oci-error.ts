import type { OciError } from '../../src/oci/errors.js';

/** The OCI error code `fn` throws, or undefined when it does not throw. */
export function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as OciError).code;
  }
  return undefined;
}
