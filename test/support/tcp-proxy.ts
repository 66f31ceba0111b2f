// A TCP proxy for fault injection: adds latency to every chunk in both directions, can cut every
// connection at once, the one connection that sends a given request, or that connection once its
// answer comes (the request took effect, the answer is lost), and can play an unreachable
// server for a while (pause, then resume on the same port) or one that stops answering (stall).
// Tests put it between a process and Postgres or Redis.
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface TcpProxy {
  port: number;
  latencyMs: number;
  /**
   * When set, a chunk from the client that it matches is not relayed: its connection is cut instead,
   * as a network blip or a server restart cuts a connection in the middle of a request.
   */
  cutOn: ((chunk: Buffer) => boolean) | null;
  /**
   * When set, a chunk from the client that it matches is relayed, and its connection is cut when the
   * server's answer comes, which is not relayed: the request took effect, its caller never hears so.
   */
  cutReplyOn: ((chunk: Buffer) => boolean) | null;
  cutAll(): void;
  /**
   * Plays a server that stops answering: connections stay open, nothing is relayed either way
   * (and what was not relayed is lost), until resume().
   */
  stall(): void;
  /**
   * Plays a server that is away, until resume(): cuts every connection, then either refuses new ones
   * (`refuse`: the port is closed, as when Redis is down) or accepts and drops each at once (`drop`: as
   * a TCP load balancer in front of a dead server does).
   */
  pause(mode?: 'refuse' | 'drop'): Promise<void>;
  /** Relays new connections again, on the same port. */
  resume(): Promise<void>;
  close(): Promise<void>;
}

type Match = ((chunk: Buffer) => boolean) | null;

export async function startTcpProxy(target: { host: string; port: number }, latencyMs = 0): Promise<TcpProxy> {
  const proxy = new RelayingProxy(target, latencyMs);
  await proxy.listen(0);
  return proxy;
}

/** The proxy: one upstream connection per client connection, each chunk relayed as the faults set allow. */
class RelayingProxy implements TcpProxy {
  port = 0;
  cutOn: Match = null;
  cutReplyOn: Match = null;
  private dropping = false;
  private stalled = false;
  private readonly sockets = new Set<Socket>();
  /** Upstream sockets whose next answer is to be swallowed, with the connection. */
  private readonly replyCut = new WeakSet<Socket>();
  private readonly server: Server;

  constructor(
    private readonly target: { host: string; port: number },
    public latencyMs: number,
  ) {
    this.server = createServer((client) => this.accept(client));
  }

  /** Listens on `port` (0: any free one, kept for every later resume). */
  async listen(port: number): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(port, '127.0.0.1', resolve));
    const address = this.server.address();
    if (!address || typeof address === 'string') throw new Error('proxy has no port');
    this.port = address.port;
  }

  cutAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  async pause(mode: 'refuse' | 'drop' = 'refuse'): Promise<void> {
    if (mode === 'drop') {
      this.dropping = true;
      this.cutAll();
      return;
    }
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.cutAll();
    await closed;
  }

  stall(): void {
    this.stalled = true;
  }

  async resume(): Promise<void> {
    this.dropping = false;
    if (this.stalled) {
      // The stalled connections lost bytes mid-protocol: they are cut, and their clients reconnect.
      this.stalled = false;
      this.cutAll();
    }
    if (!this.server.listening) await this.listen(this.port);
  }

  close(): Promise<void> {
    this.cutAll();
    return new Promise((resolve) => (this.server.listening ? this.server.close(() => resolve()) : resolve()));
  }

  /** A new client connection: dropped while the proxy plays a dead server, else paired with one upstream. */
  private accept(client: Socket): void {
    if (this.dropping) {
      client.destroy();
      return;
    }
    const upstream = connect(this.target.port, this.target.host);
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    }
    this.relay(client, upstream, true);
    this.relay(upstream, client, false);
  }

  /** Relays what `from` sends to `to`, late by latencyMs, unless a fault swallows it or cuts the pair. */
  private relay(from: Socket, to: Socket, fromClient: boolean): void {
    from.on('data', (chunk: Buffer) => {
      if (this.stalled) return;
      if (fromClient && this.cutOn?.(chunk)) {
        from.destroy();
        to.destroy();
        return;
      }
      if (fromClient && this.cutReplyOn?.(chunk)) this.replyCut.add(to);
      if (!fromClient && this.replyCut.has(from)) {
        from.destroy();
        to.destroy();
        return;
      }
      if (this.latencyMs <= 0) to.write(chunk);
      else setTimeout(() => to.destroyed || to.write(chunk), this.latencyMs);
    });
    from.on('close', () => setTimeout(() => to.destroy(), this.latencyMs));
    from.on('error', () => to.destroy());
  }
}

/** The same URL pointed at the proxy. */
export function viaProxy(url: string, proxy: TcpProxy): string {
  const u = new URL(url);
  u.hostname = '127.0.0.1';
  u.port = String(proxy.port);
  return u.toString();
}

/** A proxy in front of the test Redis, and the REDIS_URL that goes through it. */
export async function proxiedRedis(): Promise<{ proxy: TcpProxy; redisUrl: string }> {
  const direct = process.env.REDIS_URL as string;
  const redis = new URL(direct);
  const proxy = await startTcpProxy({ host: redis.hostname, port: Number(redis.port || 6379) });
  return { proxy, redisUrl: viaProxy(direct, proxy) };
}

/** A proxy in front of the test Postgres that adds `latencyMs` each way, and the URL through it. */
export async function slowPostgres(latencyMs: number): Promise<{ proxy: TcpProxy; databaseUrl: string }> {
  const direct = process.env.DATABASE_URL as string;
  const pg = new URL(direct);
  const proxy = await startTcpProxy({ host: pg.hostname, port: Number(pg.port || 5432) }, latencyMs);
  return { proxy, databaseUrl: viaProxy(direct, proxy) };
}
