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

export async function startTcpProxy(target: { host: string; port: number }, latencyMs = 0): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  type Match = ((chunk: Buffer) => boolean) | null;
  const state: { latencyMs: number; dropping: boolean; stalled: boolean; cutOn: Match; cutReplyOn: Match } = {
    latencyMs,
    dropping: false,
    stalled: false,
    cutOn: null,
    cutReplyOn: null,
  };
  /** Upstream sockets whose next answer is to be swallowed, with the connection. */
  const replyCut = new WeakSet<Socket>();
  const relay = (from: Socket, to: Socket, fromClient: boolean) => {
    from.on('data', (chunk: Buffer) => {
      if (state.stalled) return;
      if (fromClient && state.cutOn?.(chunk)) {
        from.destroy();
        to.destroy();
        return;
      }
      if (fromClient && state.cutReplyOn?.(chunk)) replyCut.add(to);
      if (!fromClient && replyCut.has(from)) {
        from.destroy();
        to.destroy();
        return;
      }
      if (state.latencyMs <= 0) to.write(chunk);
      else setTimeout(() => to.destroyed || to.write(chunk), state.latencyMs);
    });
    from.on('close', () => setTimeout(() => to.destroy(), state.latencyMs));
    from.on('error', () => to.destroy());
  };
  const server: Server = createServer((client) => {
    if (state.dropping) {
      client.destroy();
      return;
    }
    const upstream = connect(target.port, target.host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    }
    relay(client, upstream, true);
    relay(upstream, client, false);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (!address || typeof address === 'string') throw new Error('proxy has no port');
  return {
    port: address.port,
    get latencyMs() {
      return state.latencyMs;
    },
    set latencyMs(ms: number) {
      state.latencyMs = ms;
    },
    get cutOn() {
      return state.cutOn;
    },
    set cutOn(match: ((chunk: Buffer) => boolean) | null) {
      state.cutOn = match;
    },
    get cutReplyOn() {
      return state.cutReplyOn;
    },
    set cutReplyOn(match: ((chunk: Buffer) => boolean) | null) {
      state.cutReplyOn = match;
    },
    cutAll() {
      for (const s of sockets) s.destroy();
    },
    async pause(mode = 'refuse') {
      if (mode === 'drop') {
        state.dropping = true;
        for (const s of sockets) s.destroy();
        return;
      }
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
    stall() {
      state.stalled = true;
    },
    async resume() {
      state.dropping = false;
      if (state.stalled) {
        // The stalled connections lost bytes mid-protocol: they are cut, and their clients reconnect.
        state.stalled = false;
        for (const s of sockets) s.destroy();
      }
      if (!server.listening) await new Promise<void>((resolve) => server.listen(address.port, '127.0.0.1', resolve));
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => (server.listening ? server.close(() => resolve()) : resolve()));
    },
  };
}

/** The same URL pointed at the proxy. */
export function viaProxy(url: string, proxy: TcpProxy): string {
  const u = new URL(url);
  u.hostname = '127.0.0.1';
  u.port = String(proxy.port);
  return u.toString();
}

/** A proxy in front of the test Postgres that adds `latencyMs` each way, and the URL through it. */
/** A proxy in front of the test Redis, and the REDIS_URL that goes through it. */
export async function proxiedRedis(): Promise<{ proxy: TcpProxy; redisUrl: string }> {
  const direct = process.env.REDIS_URL as string;
  const redis = new URL(direct);
  const proxy = await startTcpProxy({ host: redis.hostname, port: Number(redis.port || 6379) });
  return { proxy, redisUrl: viaProxy(direct, proxy) };
}

export async function slowPostgres(latencyMs: number): Promise<{ proxy: TcpProxy; databaseUrl: string }> {
  const direct = process.env.DATABASE_URL as string;
  const pg = new URL(direct);
  const proxy = await startTcpProxy({ host: pg.hostname, port: Number(pg.port || 5432) }, latencyMs);
  return { proxy, databaseUrl: viaProxy(direct, proxy) };
}
