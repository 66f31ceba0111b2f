import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { keepAliveClient } from './api';
import { KeepAliveConnection, KeepAlivePool, requestBytes } from './keep-alive';

/** A real Node server whose answer each test picks by path; it records what it was sent and on which socket. */
function server() {
  const seen: { method: string; url: string; headers: http.IncomingHttpHeaders; body: string; socket: unknown }[] = [];
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body, socket: req.socket });
      if (req.url === '/chunked') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.write('{"status":');
        res.write('"succeeded","note":"żółw"');
        res.end('}');
      } else if (req.url === '/close') {
        res.writeHead(503, { connection: 'close', 'content-type': 'application/json' });
        res.end('{"error":"draining"}');
      } else if (req.url === '/hang-up') {
        req.socket.destroy();
      } else if (req.url === '/silent') {
        // never answers
      } else if (req.url === '/empty') {
        res.writeHead(204);
        res.end();
      } else {
        const text = JSON.stringify({ status: 'rejected', echo: body });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
        res.end(text);
      }
    });
  });
  // Node answers `Keep-Alive: timeout=3` and closes a connection idle for 3 s.
  srv.keepAliveTimeout = 3_000;
  return new Promise<{ url: URL; seen: typeof seen; close: () => Promise<void> }>((resolve) =>
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as AddressInfo;
      resolve({
        url: new URL(`http://127.0.0.1:${port}`),
        seen,
        close: () => new Promise((done) => srv.close(() => done())),
      });
    }),
  );
}

describe('KeepAliveConnection', () => {
  let s: Awaited<ReturnType<typeof server>>;
  let conn: KeepAliveConnection;
  beforeEach(async () => {
    s = await server();
    conn = new KeepAliveConnection(s.url, 500);
  });
  afterEach(async () => {
    conn.close();
    await s.close();
  });

  it('sends the request as built and reads a Content-Length answer, reusing the connection', async () => {
    const body = JSON.stringify({ policyId: 'p-1' });
    const req = requestBytes('POST', s.url, '/issue', { authorization: 'Bearer t', prefer: 'wait=10' }, body);
    const first = await conn.send(req);
    const second = await conn.send(req);
    expect(first).toEqual({ status: 200, text: JSON.stringify({ status: 'rejected', echo: body }) });
    expect(second.status).toBe(200);
    expect(s.seen).toHaveLength(2);
    expect(s.seen[0]).toMatchObject({ method: 'POST', url: '/issue', body });
    expect(s.seen[0]!.headers).toMatchObject({ authorization: 'Bearer t', prefer: 'wait=10', host: s.url.host });
    expect(s.seen[1]!.socket).toBe(s.seen[0]!.socket);
  });

  it("opens a new connection rather than reuse one idle for nearly the server's keep-alive timeout", async () => {
    const req = requestBytes('GET', s.url, '/any', {});
    await conn.send(req);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await conn.send(req);
    // Idle 2.3 s of the server's 3 s: within a second of its timeout, so not reused (the server
    // would still have answered on it).
    await new Promise((resolve) => setTimeout(resolve, 2_300));
    expect((await conn.send(req)).status).toBe(200);
    expect(s.seen).toHaveLength(3);
    expect(s.seen[1]!.socket).toBe(s.seen[0]!.socket);
    expect(s.seen[2]!.socket).not.toBe(s.seen[1]!.socket);
  });

  it('reads a chunked answer, multi-byte characters included', async () => {
    const answer = await conn.send(requestBytes('GET', s.url, '/chunked', {}));
    expect(answer).toEqual({ status: 200, text: '{"status":"succeeded","note":"żółw"}' });
  });

  it('reads an answer without a body', async () => {
    expect(await conn.send(requestBytes('GET', s.url, '/empty', {}))).toEqual({ status: 204, text: '' });
  });

  it('after `Connection: close` the next request opens a new connection', async () => {
    const closing = await conn.send(requestBytes('GET', s.url, '/close', {}));
    const next = await conn.send(requestBytes('GET', s.url, '/after', {}));
    expect(closing).toEqual({ status: 503, text: '{"error":"draining"}' });
    expect(next.status).toBe(200);
    expect(s.seen[1]!.socket).not.toBe(s.seen[0]!.socket);
  });

  it('rejects when the server hangs up, and works again on a new connection', async () => {
    await expect(conn.send(requestBytes('GET', s.url, '/hang-up', {}))).rejects.toThrow(/closed before the answer|ECONNRESET/);
    expect((await conn.send(requestBytes('GET', s.url, '/ok', {}))).status).toBe(200);
  });

  it('rejects when no answer comes within the timeout', async () => {
    await expect(conn.send(requestBytes('GET', s.url, '/silent', {}))).rejects.toThrow('no answer in 500 ms');
  });

  it('refuses a second request while one is on the wire', async () => {
    const first = conn.send(requestBytes('GET', s.url, '/ok', {}));
    await expect(conn.send(requestBytes('GET', s.url, '/ok', {}))).rejects.toThrow('one request at a time');
    expect((await first).status).toBe(200);
  });
});

it('a connection the server closed while idle is replaced by the next request', async () => {
  const s = await server();
  const conn = new KeepAliveConnection(s.url, 500);
  try {
    expect((await conn.send(requestBytes('GET', s.url, '/ok', {}))).status).toBe(200);
    (s.seen[0]!.socket as { destroy(): void }).destroy();
    await new Promise((r) => setTimeout(r, 50));
    expect((await conn.send(requestBytes('GET', s.url, '/ok', {}))).status).toBe(200);
    expect(s.seen[1]!.socket).not.toBe(s.seen[0]!.socket);
  } finally {
    conn.close();
    await s.close();
  }
});

describe('KeepAlivePool', () => {
  /** A server and a pool of at most `max` connections to it, both closed after `use`. */
  async function withPool(max: number, use: (pool: KeepAlivePool, s: Awaited<ReturnType<typeof server>>) => Promise<void>) {
    const s = await server();
    const pool = new KeepAlivePool(s.url, max, 2_000);
    try {
      await use(pool, s);
    } finally {
      pool.close();
      await s.close();
    }
  }

  it('serves many callers at once over at most `max` connections, the rest waiting their turn', () =>
    withPool(4, async (pool, s) => {
      const answers = await Promise.all(
        Array.from({ length: 40 }, (_, i) => pool.send(requestBytes('POST', s.url, '/echo', {}, JSON.stringify({ i })))),
      );
      // Each caller gets its own answer, not another's.
      expect(answers.map((a) => JSON.parse(a.text).echo)).toEqual(Array.from({ length: 40 }, (_, i) => JSON.stringify({ i })));
      expect(pool.size).toBe(4);
      expect(new Set(s.seen.map((r) => r.socket)).size).toBe(4);
    }));

  it('gives a connection back after a failure, and it answers again on a fresh socket', () =>
    withPool(1, async (pool, s) => {
      await expect(pool.send(requestBytes('GET', s.url, '/hang-up', {}))).rejects.toThrow();
      expect((await pool.send(requestBytes('GET', s.url, '/ok', {}))).status).toBe(200);
      expect(pool.size).toBe(1);
    }));

  it("backs the benches' JSON calls: token, JSON body and headers sent, the JSON answer parsed", () =>
    withPool(2, async (pool, s) => {
      const call = keepAliveClient(pool);
      const reply = await call('POST', '/api/v1/coupons/reserve', 'tok', { couponId: 'c-1' }, { prefer: 'wait=10' });
      expect(reply).toEqual({ status: 200, body: { status: 'rejected', echo: JSON.stringify({ couponId: 'c-1' }) } });
      expect(s.seen[0]!.headers).toMatchObject({ authorization: 'Bearer tok', 'content-type': 'application/json', prefer: 'wait=10' });
      expect((await call('GET', '/empty', 'tok')).body).toBeUndefined();
    }));
});
