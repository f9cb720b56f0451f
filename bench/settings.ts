const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Sizes, repetitions and durations of one run; `full` is `npm run bench`, `quick` is `--quick`. */
export interface BenchSettings {
  mode: 'full' | 'quick';
  sizes: {
    /** The "1 MiB" single-layer image. */
    small: number;
    /** The "32 MiB" single-layer image (the large blob of the load test). */
    medium: number;
    /** The "256 MiB" single-layer image (the herd). */
    herd: number;
    /** The "1 GiB" single-layer image (warm throughput). */
    warm: number;
    /** Each layer of the 40-layer image. */
    manyLayer: number;
    manyLayers: number;
    /** Each layer of each platform of the multi-arch index. */
    multiLayer: number;
  };
  /** `clients` concurrent clients, each on its own stored blob of `parallelBlob` bytes. */
  warmBlob: { reps: number; clients: number; parallelBlob: number };
  manifests: { reps: number; durationSeconds: number; connections: number; threads: number };
  coldPull: { reps: number; concurrency: number };
  herd: { reps: number; clients: number };
  credentials: { reps: number; pullsPerRep: number; durationSeconds: number; concurrency: number };
  load: { reps: number; requests: number; concurrency: number; coldLayers: number; coldLayer: number };
  pullLimit: { reps: number; images: number; layers: number; layer: number; concurrency: number };
  /** Cluster rollout (#13): K nodes pull one cold image at once through an upstream limited to `bandwidth` bytes/s. */
  rollout: { reps: number; nodes: number[]; layers: number; layer: number; bandwidth: number; concurrency: number };
  /** `ctr images pull` of one image of these gzip layers (bytes, files per layer); the throttled upstream's rate. */
  ctrPull: { reps: number; layers: Array<{ bytes: number; files: number }>; throttledBytesPerSecond: number };
}

/** The figures RESULTS.md holds: sizes from the issue, repetitions cut so a run stays under about 15 minutes. */
export const FULL: BenchSettings = {
  mode: 'full',
  sizes: { small: 1 * MiB, medium: 32 * MiB, herd: 256 * MiB, warm: 1 * GiB, manyLayer: 512 * KiB, manyLayers: 40, multiLayer: 2 * MiB },
  warmBlob: { reps: 5, clients: 16, parallelBlob: 64 * MiB },
  manifests: { reps: 3, durationSeconds: 5, connections: 64, threads: 1 },
  coldPull: { reps: 5, concurrency: 8 },
  herd: { reps: 3, clients: 64 },
  credentials: { reps: 3, pullsPerRep: 10, durationSeconds: 3, concurrency: 8 },
  load: { reps: 3, requests: 3000, concurrency: 32, coldLayers: 12, coldLayer: 1 * MiB },
  pullLimit: { reps: 1, images: 20, layers: 2, layer: 4 * MiB, concurrency: 8 },
  // containerd downloads 3 layers of an image at a time (max_concurrent_downloads).
  rollout: { reps: 1, nodes: [1, 2, 4, 8], layers: 5, layer: 32 * MiB, bandwidth: 50 * MiB, concurrency: 3 },
  // A realistic application image: 150 MiB in 5 layers, a large base, smaller ones on top.
  ctrPull: {
    reps: 3,
    layers: [
      { bytes: 64 * MiB, files: 400 },
      { bytes: 40 * MiB, files: 200 },
      { bytes: 24 * MiB, files: 100 },
      { bytes: 16 * MiB, files: 50 },
      { bytes: 6 * MiB, files: 20 },
    ],
    throttledBytesPerSecond: 50 * MiB,
  },
};

/** A smoke run: every scenario end to end with tiny sizes, well under two minutes. */
export const QUICK: BenchSettings = {
  mode: 'quick',
  sizes: { small: 64 * KiB, medium: 1 * MiB, herd: 8 * MiB, warm: 16 * MiB, manyLayer: 16 * KiB, manyLayers: 40, multiLayer: 64 * KiB },
  warmBlob: { reps: 2, clients: 16, parallelBlob: 1 * MiB },
  manifests: { reps: 1, durationSeconds: 1, connections: 64, threads: 1 },
  coldPull: { reps: 2, concurrency: 8 },
  herd: { reps: 1, clients: 64 },
  credentials: { reps: 1, pullsPerRep: 2, durationSeconds: 1, concurrency: 8 },
  load: { reps: 1, requests: 300, concurrency: 16, coldLayers: 4, coldLayer: 64 * KiB },
  pullLimit: { reps: 1, images: 20, layers: 1, layer: 64 * KiB, concurrency: 8 },
  rollout: { reps: 1, nodes: [1, 2], layers: 5, layer: 1 * MiB, bandwidth: 4 * MiB, concurrency: 3 },
  ctrPull: {
    reps: 1,
    layers: [
      { bytes: 2 * MiB, files: 8 },
      { bytes: 1 * MiB, files: 4 },
      { bytes: 512 * KiB, files: 2 },
      { bytes: 256 * KiB, files: 1 },
      { bytes: 64 * KiB, files: 1 },
    ],
    throttledBytesPerSecond: 50 * MiB,
  },
};

/** Human-readable size: 1 GiB, 256 MiB, 16 KiB. */
export function formatBytes(bytes: number): string {
  if (bytes >= GiB && bytes % GiB === 0) return `${bytes / GiB} GiB`;
  if (bytes >= MiB && bytes % MiB === 0) return `${bytes / MiB} MiB`;
  if (bytes >= KiB && bytes % KiB === 0) return `${bytes / KiB} KiB`;
  return `${bytes} B`;
}
