/** A request URL's path: everything before the query string (indexOf and slice; no array per request as split makes). */
export function urlPath(url: string): string {
  const query = url.indexOf('?');
  return query < 0 ? url : url.slice(0, query);
}
