// Caps request bodies. A declared Content-Length is checked from the header alone; only a body sent
// without one (chunked) is metered while it streams, since that needs the full Web Request object,
// which costs a quarter of a request's CPU on the hot path.
// A refused body is not read further, so its 413 closes the connection (`Connection: close`): left
// to @hono/node-server, the rest of a chunked body stays paused under the Web stream that metered it,
// its drain gives up after 500 ms and drops the socket, and a client that took the 413's keep-alive
// at its word would lose the next request it sent on that connection. The rest is discarded while
// the connection closes (a lingering close, bounded), so the client is not reset before it reads the 413.
import type { Socket } from 'node:net';
import type { HttpBindings } from '@hono/node-server';
import type { MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { AppError } from '../../core/errors';
import type { AppEnv } from '../context';

/** How long a connection closing on a refused body discards what the client still sends. */
const LINGER_MS = 2_000;

/**
 * Answers with `Connection: close` and discards the rest of the request's body until the client has
 * read the answer and closed, or LINGER_MS: Node closes such a connection as soon as the answer is
 * written, and closing a socket with unread bytes resets it, which can lose the answer.
 */
function closeAfterAnswer(env: unknown): void {
  const { incoming, outgoing } = (env ?? {}) as Partial<HttpBindings>;
  if (!incoming || !outgoing || outgoing.headersSent) return;
  outgoing.setHeader('connection', 'close');
  // Unhooks the Web stream that may have read part of the body (it would pause it again), then lets it flow away.
  incoming.removeAllListeners('data');
  incoming.resume();
  const socket = incoming.socket as Socket & { destroySoon?: () => void };
  socket.destroySoon = () => {
    socket.end();
    const timer = setTimeout(() => socket.destroy(), LINGER_MS);
    timer.unref();
    socket.once('close', () => clearTimeout(timer));
  };
}

/** Refuses bodies over maxBytes with 413 PAYLOAD_TOO_LARGE, closing the connection (see above). */
export function limitBody(maxBytes: number): MiddlewareHandler<AppEnv> {
  const tooLarge = (env: unknown) => {
    closeAfterAnswer(env);
    return new AppError('PAYLOAD_TOO_LARGE', `The body may be at most ${maxBytes} bytes.`);
  };
  const metered = bodyLimit({
    maxSize: maxBytes,
    onError: (c) => {
      throw tooLarge(c.env);
    },
  });
  return async (c, next) => {
    if (c.req.method === 'GET' || c.req.method === 'HEAD') return next();
    const length = c.req.header('content-length');
    if (length !== undefined && c.req.header('transfer-encoding') === undefined) {
      if (Number(length) > maxBytes) throw tooLarge(c.env);
      return next();
    }
    return metered(c, next);
  };
}
