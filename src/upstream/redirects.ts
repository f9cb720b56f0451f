import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';
import type { RegistryConfig } from '../config/load.js';
import { OciError } from '../oci/errors.js';

/**
 * Addresses a redirect may not lead to unless allowed by name: this host, its networks and special-purpose ranges
 * (RFC 6890 and the IANA registries). A registry that redirects blob downloads to a CDN sends them to a public
 * address; one that redirects to 127.0.0.1, 169.254.169.254 or 10.x would make the cache fetch from services behind
 * the node's firewall and hand their answers to its clients.
 */
const NON_PUBLIC = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.88.99.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  NON_PUBLIC.addSubnet(net, prefix, 'ipv4');
}
for (const [net, prefix] of [
  ['::', 128],
  ['::1', 128],
  // IPv4/IPv6 translation, 6to4 and Teredo embed IPv4 addresses that may be private: refused outright. (IPv4-mapped
  // addresses are refused in isPublicAddress: a ::ffff:0:0/96 rule here would match every IPv4 address too.)
  ['64:ff9b::', 96],
  ['64:ff9b:1::', 48],
  ['100::', 64],
  ['2001::', 32],
  ['2001:db8::', 32],
  ['2002::', 16],
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10],
  ['ff00::', 8],
] as const) {
  NON_PUBLIC.addSubnet(net, prefix, 'ipv6');
}

/** Whether an IP address is a public unicast address (not loopback, link-local, private, reserved or multicast). */
export function isPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return false;
  if (family === 6 && /^::ffff:/i.test(new URL(`http://[${address}]/`).hostname.slice(1, -1))) return false;
  return !NON_PUBLIC.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

function bare(hostname: string): string {
  return hostname.toLowerCase().replace(/^\[|\]$/g, '');
}

/**
 * Host names a registry's redirects may lead to whatever their address: the registry's own endpoints (the cache
 * already trusts them, and a registry on a private network redirects within it) and its `redirectAllowlist`
 * (private CDNs). Every other target must be on a public address.
 */
export function redirectExempt(registry: RegistryConfig, hostname: string): boolean {
  const host = bare(hostname);
  if ([registry.url, ...registry.mirrors].some((u) => bare(u.hostname) === host)) return true;
  return registry.redirectAllowlist.some((entry) => (entry.startsWith('*.') ? host.endsWith(entry.slice(1)) : host === entry));
}

/** A refused redirect: the upstream pointed the cache at an address it must not fetch from. */
export function forbiddenRedirect(registry: string, target: URL, why: string): OciError {
  return new OciError('UNAVAILABLE', `upstream ${registry} redirected to a forbidden address (${why})`, {
    status: 502,
    detail: { registry, redirectHost: target.hostname.slice(0, 200) },
  });
}

/**
 * Checks a redirect target before any connection: http(s), and unless exempt, an IP literal that is public or a name
 * whose every address is public. `lookup` is the resolver the connection will use (tests map names to loopback).
 */
export async function checkRedirectTarget(registry: RegistryConfig, target: URL, lookup: LookupFunction | undefined): Promise<void> {
  if (target.protocol !== 'https:' && target.protocol !== 'http:') throw forbiddenRedirect(registry.host, target, 'not http(s)');
  if (target.username || target.password) throw forbiddenRedirect(registry.host, target, 'credentials in the URL');
  if (redirectExempt(registry, target.hostname)) return;
  const host = bare(target.hostname);
  if (isIP(host)) {
    if (!isPublicAddress(host)) throw forbiddenRedirect(registry.host, target, 'not a public address');
    return;
  }
  const addresses = await new Promise<LookupAddress[]>((resolve, reject) => {
    (lookup ?? (dnsLookup as unknown as LookupFunction))(host, { all: true }, ((err: Error | null, result: LookupAddress[] | string, family?: number) => {
      if (err) reject(forbiddenRedirect(registry.host, target, 'name does not resolve'));
      else resolve(Array.isArray(result) ? result : [{ address: result, family: family ?? 4 }]);
    }) as never);
  });
  if (addresses.length === 0 || addresses.some((a) => !isPublicAddress(a.address))) {
    throw forbiddenRedirect(registry.host, target, 'name resolves to a non-public address');
  }
}

/**
 * A resolver for connections to redirect targets: it refuses, at connect time, a name that resolves to a non-public
 * address unless exempt, so a name that answered with a public address for the check cannot rebind to 127.0.0.1
 * for the connection.
 */
export function publicOnlyLookup(exempt: (hostname: string) => boolean, inner: LookupFunction | undefined): LookupFunction {
  const base = inner ?? (dnsLookup as unknown as LookupFunction);
  return ((hostname: string, options: object, callback: (err: Error | null, address?: unknown, family?: number) => void) => {
    base(hostname, options as never, ((err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => {
      if (err || exempt(hostname)) return callback(err, address, family);
      const list = Array.isArray(address) ? address.map((a) => a.address) : [address];
      if (list.some((a) => !isPublicAddress(a))) {
        return callback(Object.assign(new Error(`redirect target ${hostname} resolves to a non-public address`), { code: 'ERR_REDIRECT_NOT_PUBLIC' }));
      }
      callback(null, address, family);
    }) as never);
  }) as unknown as LookupFunction;
}
