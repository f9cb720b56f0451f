import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';

/** An HTTP CONNECT proxy on loopback that counts tunnels and remembers the Proxy-Authorization it saw. */
export class ConnectProxy {
  /** Instead of tunnelling: answer CONNECT with this status (407 with a Basic challenge, as squid does), or never answer. */
  refuse: number | 'hang' | undefined;
  tunnels: string[] = [];
  proxyAuthorizations: (string | undefined)[] = [];
  url = '';
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();

  /** Listens on 127.0.0.1, an ephemeral port. */
  async start(): Promise<this> {
    this.server = createServer((_req, res) => {
      res.writeHead(405).end('only CONNECT');
    });
    this.server.on('connect', (req, client: Socket, head: Buffer) => {
      this.tunnels.push(req.url ?? '');
      this.proxyAuthorizations.push(req.headers['proxy-authorization']);
      this.sockets.add(client);
      client.on('close', () => this.sockets.delete(client));
      client.on('error', () => client.destroy());
      if (this.refuse === 'hang') return;
      if (this.refuse !== undefined) {
        const challenge = this.refuse === 407 ? 'Proxy-Authenticate: Basic realm="egress"\r\n' : '';
        client.end(`HTTP/1.1 ${this.refuse} Refused\r\n${challenge}Content-Length: 0\r\nConnection: close\r\n\r\n`);
        return;
      }
      const [host, port] = (req.url ?? '').split(':');
      const upstream = connect(Number(port), host ?? '127.0.0.1', () => {
        client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        if (head.length > 0) upstream.write(head);
        upstream.pipe(client);
        client.pipe(upstream);
      });
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
    });
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  /** Stops and drops open tunnels. */
  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
