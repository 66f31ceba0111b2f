import { readFileSync } from 'node:fs';
import net from 'node:net';
import { freePort } from './process';

const ephemeralLow = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);

describe('freePort', () => {
  it("picks ports below the OS's ephemeral range, where no outgoing connection can take them, and each can be listened on", async () => {
    const ports = await Promise.all(Array.from({ length: 20 }, () => freePort()));
    for (const port of ports) {
      expect(port).toBeGreaterThanOrEqual(10_000);
      expect(port).toBeLessThan(ephemeralLow);
    }
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: '127.0.0.1', port: ports[0] }, resolve);
    });
    // Taken now: never answered again while it is.
    const again = await Promise.all(Array.from({ length: 50 }, () => freePort()));
    expect(again).not.toContain(ports[0]);
    await new Promise((resolve) => server.close(resolve));
  });
});
