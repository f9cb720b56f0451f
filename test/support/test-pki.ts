import { generateKeyPairSync } from 'node:crypto';
import forge from 'node-forge';

/** A throwaway CA with a server certificate for 127.0.0.1/localhost and a client certificate. */
export interface TestPki {
  caPem: string;
  serverCertPem: string;
  serverKeyPem: string;
  clientCertPem: string;
  clientKeyPem: string;
}

function keyPair(): { pem: string; priv: forge.pki.rsa.PrivateKey; pub: forge.pki.rsa.PublicKey } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs1', format: 'pem' },
  });
  return { pem: privateKey, priv: forge.pki.privateKeyFromPem(privateKey), pub: forge.pki.publicKeyFromPem(publicKey) };
}

function certificate(
  subject: string,
  pub: forge.pki.rsa.PublicKey,
  issuer: { name: string; priv: forge.pki.rsa.PrivateKey },
  extensions: object[],
  serial: string,
): string {
  const cert = forge.pki.createCertificate();
  cert.publicKey = pub;
  cert.serialNumber = serial;
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 24 * 3600_000);
  cert.setSubject([{ name: 'commonName', value: subject }]);
  cert.setIssuer([{ name: 'commonName', value: issuer.name }]);
  cert.setExtensions(extensions);
  cert.sign(issuer.priv, forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

/** Generates a CA and certificates signed by it (keys from Node's crypto, certificates by node-forge). */
export function makeTestPki(): TestPki {
  const ca = keyPair();
  const server = keyPair();
  const client = keyPair();
  const issuer = { name: 'registry-cache test CA', priv: ca.priv };
  return {
    caPem: certificate('registry-cache test CA', ca.pub, issuer, [{ name: 'basicConstraints', cA: true }, { name: 'keyUsage', keyCertSign: true, cRLSign: true }], '01'),
    serverCertPem: certificate(
      'localhost',
      server.pub,
      issuer,
      [
        { name: 'basicConstraints', cA: false },
        { name: 'extKeyUsage', serverAuth: true },
        { name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }, { type: 2, value: 'localhost' }] },
      ],
      '02',
    ),
    serverKeyPem: server.pem,
    clientCertPem: certificate('tenant-client', client.pub, issuer, [{ name: 'basicConstraints', cA: false }, { name: 'extKeyUsage', clientAuth: true }], '03'),
    clientKeyPem: client.pem,
  };
}
