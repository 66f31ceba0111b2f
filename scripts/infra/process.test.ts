import { readFileSync } from 'node:fs';
import net from 'node:net';
import { freePort } from './process';

const ephemeralLow = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);

/** A listener on a port of freePort's range, found by trying. */
async function listenBelowEphemeral(): Promise<{ server: net.Server; port: number }> {
  for (;;) {
    const port = 10_000 + Math.floor(Math.random() * (ephemeralLow - 10_000));
    const server = net.createServer();
    const listening = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen({ host: '127.0.0.1', port }, () => resolve(true));
    });
    if (listening) return { server, port };
  }
}

describe('freePort', () => {
  it("picks ports below the OS's ephemeral range, where no outgoing connection can take them, and each can be listened on", async () => {
    const ports = await Promise.all(Array.from({ length: 20 }, () => freePort()));
    for (const port of ports) {
      expect(port).toBeGreaterThanOrEqual(10_000);
      expect(port).toBeLessThan(ephemeralLow);
    }
    expect(new Set(ports).size).toBe(ports.length);
  });

  it('skips a port that is taken, and never answers one it already handed out', async () => {
    const { server, port: taken } = await listenBelowEphemeral();
    const first = await freePort();
    // The next draws: the port a listener holds, the port just handed out, then any other.
    const pick = (port: number) => (port - 10_000 + 0.5) / (ephemeralLow - 10_000);
    const draws = [pick(taken), pick(first), Math.random()];
    const random = jest.spyOn(Math, 'random').mockImplementation(() => draws.shift() ?? 0.5);
    try {
      const next = await freePort();
      expect(next).not.toBe(first);
      expect(next).not.toBe(taken);
      expect(random).toHaveBeenCalledTimes(3);
    } finally {
      random.mockRestore();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
