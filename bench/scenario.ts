import { pullImage } from './clients.js';
import type { BenchContext, PushedImage } from './context.js';
import type { ManagedServer } from './systems.js';
import type { ScenarioResult } from './results.js';
import type { Teardown } from './teardown.js';

/** A scenario's own part of its result; run.ts adds status and timing. */
export type SectionOutput = Omit<ScenarioResult, 'status' | 'message' | 'seconds' | 'id' | 'number' | 'title'>;

/** A scenario's result, plus any further sections it measured on the way (the herd also yields memory). */
export interface ScenarioOutput extends SectionOutput {
  sections?: Array<SectionOutput & Pick<ScenarioResult, 'id' | 'number' | 'title'>>;
}

/** What a standalone scenario gets instead of the shared context: it starts its own upstream and servers. */
export interface StandaloneEnv {
  teardown: Teardown;
  log(line: string): void;
  /** In a full run: waits for the load average to settle, as before every scenario (a scenario's own steps raise it too). */
  settle?: () => Promise<unknown>;
}

/** One benchmark scenario, selectable with `--scenario` by id, alias or number. */
export interface Scenario {
  id: string;
  number: string;
  aliases: string[];
  title: string;
  /** Whether a plain `npm run bench` runs it (otherwise only `--scenario`). */
  inDefaultRun: boolean;
  run(ctx: BenchContext): Promise<ScenarioOutput>;
  /** Set for a scenario that needs none of the shared setup (docker-registry, synthesized images, peer). */
  standalone?: (env: StandaloneEnv) => Promise<ScenarioOutput>;
}

/** The path of an image's first layer blob. */
export function firstLayerPath(img: PushedImage): string {
  const layer = img.image.manifests[0]?.layers[0];
  if (!layer) throw new Error(`${img.repo} has no layer`);
  return `/v2/${img.repo}/blobs/${layer.digest}`;
}

/** The first layer's digest and size. */
export function firstLayer(img: PushedImage): { digest: string; size: number } {
  const layer = img.image.manifests[0]?.layers[0];
  if (!layer) throw new Error(`${img.repo} has no layer`);
  return { digest: layer.digest, size: layer.size };
}

/** Bytes per second → decimal megabytes per second. */
export function megabytesPerSecond(bytes: number, seconds: number): number {
  return bytes / seconds / 1e6;
}

/**
 * Empties a system (stop, delete storage, start) and then pulls the small image through it once: the content under
 * test is cold, but the process is not, as on a node where the cache has been running for a while. Without this a
 * freshly started Node process pays for lazy loading and JIT warm-up inside the measurement.
 */
export async function emptyAndWarmProcess(ctx: BenchContext, server: ManagedServer): Promise<void> {
  await server.restartClean();
  const img = ctx.images.small;
  await pullImage(server.url, img.repo, img.tag, { concurrency: 2 });
}
