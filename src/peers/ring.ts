import { createHash } from 'node:crypto';

/**
 * Rendezvous (highest-random-weight) hashing: every node ranks the same members the same way for a digest, and a
 * member joining or leaving moves only the digests it wins or won (about 1/K of them), never reshuffles the rest.
 */
export function rankMembers(digest: string, members: readonly string[]): string[] {
  return members
    .map((member) => ({ member, weight: weightOf(member, digest) }))
    .sort((a, b) => (a.weight === b.weight ? (a.member < b.member ? -1 : 1) : a.weight > b.weight ? -1 : 1))
    .map((entry) => entry.member);
}

/** The member that coordinates `digest`, or undefined when there are no members. */
export function coordinatorOf(digest: string, members: readonly string[]): string | undefined {
  let best: { member: string; weight: bigint } | undefined;
  for (const member of members) {
    const weight = weightOf(member, digest);
    if (!best || weight > best.weight || (weight === best.weight && member < best.member)) best = { member, weight };
  }
  return best?.member;
}

function weightOf(member: string, digest: string): bigint {
  // SHA-256 rather than a fast non-cryptographic hash: a peer must not be able to pick addresses that win digests.
  return createHash('sha256').update(member).update('\0').update(digest).digest().readBigUInt64BE(0);
}
