import { generateKeyPairSync } from 'node:crypto';
import forge from 'node-forge';

/** A throwaway CA with a server certificate for 127.0.0.1/localhost and a client certificate. */
export interface TestPki {
  caPem: string;
  serverCertPem: string;
  serverKeyPem: string;
  /** Same key and CA as `serverCertPem`, but its validity ended an hour ago. */
  expiredServerCertPem: string;
  /** Same key and CA as `serverCertPem`, but only for `elsewhere.example` (a name mismatch on loopback). */
  wrongNameServerCertPem: string;
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
  validity: { notBefore: Date; notAfter: Date } = { notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 24 * 3600_000) },
): string {
  const cert = forge.pki.createCertificate();
  cert.publicKey = pub;
  cert.serialNumber = serial;
  cert.validity.notBefore = validity.notBefore;
  cert.validity.notAfter = validity.notAfter;
  cert.setSubject([{ name: 'commonName', value: subject }]);
  cert.setIssuer([{ name: 'commonName', value: issuer.name }]);
  cert.setExtensions(extensions);
  cert.sign(issuer.priv, forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

/**
 * Generates a CA and certificates signed by it (keys from Node's crypto, certificates by node-forge). A second PKI
 * needs its own `caName`: OpenSSL finds an issuer by name, so two CAs of one name make a signature failure, not an
 * unknown CA.
 */
export function makeTestPki(caName = 'registry-cache test CA'): TestPki {
  const ca = keyPair();
  const server = keyPair();
  const client = keyPair();
  const issuer = { name: caName, priv: ca.priv };
  const serverExtensions = (names: object[]): object[] => [
    { name: 'basicConstraints', cA: false },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: names },
  ];
  const loopbackNames = [{ type: 7, ip: '127.0.0.1' }, { type: 2, value: 'localhost' }];
  const hour = 3600_000;
  return {
    caPem: certificate(caName, ca.pub, issuer, [{ name: 'basicConstraints', cA: true }, { name: 'keyUsage', keyCertSign: true, cRLSign: true }], '01'),
    serverCertPem: certificate('localhost', server.pub, issuer, serverExtensions(loopbackNames), '02'),
    serverKeyPem: server.pem,
    expiredServerCertPem: certificate('localhost', server.pub, issuer, serverExtensions(loopbackNames), '04', {
      notBefore: new Date(Date.now() - 48 * hour),
      notAfter: new Date(Date.now() - hour),
    }),
    wrongNameServerCertPem: certificate('elsewhere.example', server.pub, issuer, serverExtensions([{ type: 2, value: 'elsewhere.example' }]), '05'),
    clientCertPem: certificate('tenant-client', client.pub, issuer, [{ name: 'basicConstraints', cA: false }, { name: 'extKeyUsage', clientAuth: true }], '03'),
    clientKeyPem: client.pem,
  };
}
