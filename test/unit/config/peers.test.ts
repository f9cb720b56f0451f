import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, PEER_SECRET_PLACEHOLDER, loadConfig } from '../../../src/config/load.js';

const dir = mkdtempSync(join(tmpdir(), 'rc-peer-config-'));
const secretFile = join(dir, 'secret');
writeFileSync(secretFile, `${'s'.repeat(40)}\n`);
const shortSecret = join(dir, 'short');
writeFileSync(shortSecret, 'too short');

function problems(overrides: Record<string, unknown>): string[] {
  try {
    loadConfig({ env: {}, overrides });
  } catch (err) {
    if (err instanceof ConfigError) return err.problems.map((p) => `${p.key}: ${p.message}`);
    throw err;
  }
  return [];
}

describe('peer sharing configuration', () => {
  it('is off without peers or Kubernetes discovery', () => {
    expect(loadConfig({ env: {}, overrides: {} }).peers).toBeUndefined();
  });

  it('resolves a static cluster with its listener, secret and timeouts', () => {
    const config = loadConfig({ env: {}, overrides: { peers: ['127.0.0.1:15120', '127.0.0.1:15121'], peerListen: '127.0.0.1:15120', peerSecret: secretFile, peerIdleTimeout: '2s' } });
    expect(config.peers).toMatchObject({
      listen: { host: '127.0.0.1', port: 15120 },
      members: ['127.0.0.1:15120', '127.0.0.1:15121'],
      discovery: 'static',
      connectTimeoutMs: 200,
      answerTimeoutMs: 500,
      idleTimeoutMs: 2000,
      sharePrivateLayers: false,
    });
    expect(config.peers?.secret.toString()).toBe('s'.repeat(40));
  });

  it('names every missing or bad key at once', () => {
    expect(problems({ peers: ['nope'] })).toEqual([
      'peers[0]: "nope" is not host:port',
      "peerListen: required when sharing between nodes is on (host:port of this node's peer listener)",
      "peerSecret: required when sharing between nodes is on: a file holding the cluster's shared secret",
    ]);
    expect(problems({ peers: ['127.0.0.1:1'], peerListen: '127.0.0.1:1', peerSecret: shortSecret })).toEqual([
      `peerSecret: the secret in ${shortSecret} is 9 bytes; at least 32 are required`,
    ]);
    expect(problems({ peers: ['127.0.0.1:1'], peerListen: '127.0.0.1:1', peerSecret: join(dir, 'missing') })).toEqual([
      `peerSecret: cannot read ${join(dir, 'missing')}: ENOENT`,
    ]);
    expect(problems({ peerDiscovery: 'kubernetes', peers: ['127.0.0.1:1'], peerListen: '0.0.0.0:5002', peerSecret: secretFile })).toEqual([
      'peers: peerDiscovery kubernetes finds the members itself: remove peers',
      'peerService: required with peerDiscovery: kubernetes (the headless Service of the DaemonSet)',
    ]);
    expect(problems({ peerListen: '127.0.0.1:1' })).toEqual(['peerListen: set, but sharing between nodes is off (no peers and peerDiscovery is not kubernetes)']);
  });

  it('never puts the secret into an error message', () => {
    const withSecret = join(dir, 'bad-listen');
    writeFileSync(withSecret, 'x'.repeat(64));
    const messages = problems({ peers: ['127.0.0.1:1'], peerListen: 'bad', peerSecret: withSecret });
    expect(messages.join('\n')).not.toContain('x'.repeat(64));
    expect(messages).toEqual(['peerListen: "bad" is not host:port']);
  });

  it('refuses to start on the placeholder secret the shipped Secret carries, naming the key and how to fix it', () => {
    const placeholder = join(dir, 'placeholder');
    // As the Secret volume writes it (no newline), and as an editor might (with one).
    for (const text of [PEER_SECRET_PLACEHOLDER, `${PEER_SECRET_PLACEHOLDER}\n`]) {
      writeFileSync(placeholder, text);
      expect(problems({ peerDiscovery: 'kubernetes', peerService: 'registry-cache-peers', peerListen: '10.0.0.1:5002', peerSecret: placeholder })).toEqual([
        `peerSecret: ${placeholder} holds the placeholder of deploy/peer-secret.yaml, which every copy of the manifests shares: put at least 32 random bytes in the Secret registry-cache-peer (e.g. openssl rand -base64 48)`,
      ]);
    }
  });
});
