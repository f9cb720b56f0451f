/**
 * V8's full collection as a task of its own (the process keeps serving meanwhile): `regular`, or `last-resort`, which
 * also compacts and returns pages to the OS. Undefined when the process was started without `--expose-gc`.
 */
export function fullCollection(flavor: 'regular' | 'last-resort'): (() => Promise<void>) | undefined {
  const gc = globalThis.gc;
  return gc ? () => gc({ type: 'major', execution: 'async', flavor }) : undefined;
}
