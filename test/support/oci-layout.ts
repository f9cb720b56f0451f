import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FakeImage } from './fake-upstream.js';

/** Writes a FakeImage as an OCI image layout directory (what `registry-cache preload` imports). */
export async function writeOciLayout(dir: string, image: FakeImage, refName?: string): Promise<void> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  for (const b of image.blobs) await writeFile(join(dir, 'blobs', 'sha256', b.digest.slice(7)), b.bytes);
  await writeFile(join(dir, 'blobs', 'sha256', image.manifestDigest.slice(7)), image.manifest);
  const descriptor: Record<string, unknown> = { mediaType: image.mediaType, digest: image.manifestDigest, size: image.manifest.length };
  if (refName) descriptor.annotations = { 'org.opencontainers.image.ref.name': refName };
  await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [descriptor] }));
}
