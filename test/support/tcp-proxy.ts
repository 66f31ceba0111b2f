// A TCP proxy for fault injection: adds latency to every chunk in both directions, and can cut
// every connection at once. Tests put it between a process and Postgres or Redis.
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface TcpProxy {
  port: number;
  latencyMs: number;
  cutAll(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(target: { host: string; port: number }, latencyMs = 0): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  const state = { latencyMs };
  const relay = (from: Socket, to: Socket) => {
    from.on('data', (chunk) => {
      if (state.latencyMs <= 0) to.write(chunk);
      else setTimeout(() => to.destroyed || to.write(chunk), state.latencyMs);
    });
    from.on('close', () => setTimeout(() => to.destroy(), state.latencyMs));
    from.on('error', () => to.destroy());
  };
  const server: Server = createServer((client) => {
    const upstream = connect(target.port, target.host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    }
    relay(client, upstream);
    relay(upstream, client);
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
    cutAll() {
      for (const s of sockets) s.destroy();
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
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
