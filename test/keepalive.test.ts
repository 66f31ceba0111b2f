// Kept-alive connections after a refused body, over a raw socket to a real web process: a request sent
// on the same connection after a 413 is answered, or the 413 said `Connection: close` and the server
// closed the connection once the client had it. No answer lost, no request left unanswered.
import { connect } from 'node:net';
import { startStack, type Stack } from './support/stack';

let stack: Stack;

beforeAll(async () => {
  stack = await startStack({ workers: 0, name: 'keepalive' });
});

afterAll(async () => {
  await stack?.stop();
});

interface Exchange {
  /** Each answer's status and Connection header, in order. */
  answers: { status: number; connection: string }[];
  /** The socket error seen, if any (a reset). */
  error?: string;
}

/**
 * Writes each of `writes` on one connection, then reads until the server closes it or `expected`
 * answers have come (then closes it itself).
 */
function exchange(port: number, writes: string[], expected: number): Promise<Exchange> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let text = '';
    let error: string | undefined;
    const answers = () =>
      [...text.matchAll(/HTTP\/1\.1 (\d{3})[^\r]*\r\n((?:[^\r]+\r\n)*)\r\n/g)]
        .filter((m) => m[1] !== '100')
        .map((m) => ({ status: Number(m[1]), connection: /^connection: *([^\r]+)/im.exec(m[2] ?? '')?.[1]?.toLowerCase() ?? '' }));
    socket.on('data', (chunk) => {
      text += chunk.toString('latin1');
      if (answers().length >= expected) socket.destroy();
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message;
    });
    socket.on('close', () => resolve({ answers: answers(), error }));
    for (const bytes of writes) socket.write(bytes);
  });
}

const port = () => Number(new URL(stack.baseUrl).port);
const next = 'GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n';
const head = (lines: string[]) =>
  `POST /api/v1/coupons/issue HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${lines.join('\r\n')}\r\n\r\n`;
const chunked = (body: string) => `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`;

/** The first answer is `first`; the next request is answered, or the first answer closed the connection. */
function expectNothingLost(result: Exchange, first: number) {
  expect(result.answers[0]?.status).toBe(first);
  // A reset (closing on unread bytes) can destroy an answer before the client reads it.
  expect(result.error).toBeUndefined();
  if (result.answers[0]?.connection !== 'close') expect(result.answers.map((a) => a.status)).toEqual([first, 200]);
  else expect(result.answers).toHaveLength(1);
}

describe('kept-alive connections after a refused body', () => {
  it('answers a chunked body over the limit with 413 and Connection: close, never dropping a request sent after it', async () => {
    const body = `{"x":"${'z'.repeat(2 * 1024 * 1024)}"}`;
    const result = await exchange(port(), [head(['Transfer-Encoding: chunked']) + chunked(body), next], 2);
    expectNothingLost(result, 413);
    expect(result.answers[0]?.connection).toBe('close');
  });

  it('answers a declared Content-Length over the limit with 413 and Connection: close, the answer not lost to a reset', async () => {
    const body = `{"x":"${'z'.repeat(2 * 1024 * 1024)}"}`;
    const result = await exchange(port(), [head([`Content-Length: ${Buffer.byteLength(body)}`]) + body, next], 2);
    expectNothingLost(result, 413);
    expect(result.answers[0]?.connection).toBe('close');
  });

  it('keeps the connection after a small body it did not need (401), and answers the next request on it', async () => {
    const body = '{"policyId":"x"}';
    const result = await exchange(port(), [head([`Content-Length: ${body.length}`]) + body, next], 2);
    expect(result.answers).toEqual([
      { status: 401, connection: 'keep-alive' },
      { status: 200, connection: 'keep-alive' },
    ]);
  });
});
