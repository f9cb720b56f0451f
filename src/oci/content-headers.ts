/** Sent with every answer of the pull API; clients such as docker check it. */
export const API_VERSION_HEADERS: Readonly<Record<string, string>> = Object.freeze({ 'docker-distribution-api-version': 'registry/2.0' });

/** Headers of a blob answer: content-addressed bytes never change, so they may be cached forever. */
export function blobHeaders(digest: string): Record<string, string> {
  return {
    ...API_VERSION_HEADERS,
    'content-type': 'application/octet-stream',
    'docker-content-digest': digest,
    'accept-ranges': 'bytes',
    etag: `"${digest}"`,
    'cache-control': 'max-age=31536000, immutable',
  };
}

/** Headers of a manifest answer. */
export function manifestHeaders(manifest: { mediaType: string; size: number; digest: string }): Record<string, string> {
  return {
    ...API_VERSION_HEADERS,
    'content-type': manifest.mediaType,
    'content-length': String(manifest.size),
    'docker-content-digest': manifest.digest,
    etag: `"${manifest.digest}"`,
  };
}

/** First value of a header that may repeat. */
export function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}
