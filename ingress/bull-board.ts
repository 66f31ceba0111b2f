// Bull Board (the queues dashboard) at /admin/queues, behind HTTP Basic auth. Mounted beside the API,
// not under /api/v1, so the API's middleware (trace, rate limits, JWT) stays as it is.
import { dirname } from 'node:path';
import { createBullBoard } from '@bull-board/api';
import type { IServerAdapter } from '@bull-board/api/typings/app';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { HonoAdapter } from '@bull-board/hono';
import { serveStatic } from '@hono/node-server/serve-static';
import { Hono } from 'hono';
import { basicAuth } from 'hono/basic-auth';
import { csrf } from 'hono/csrf';
import { HTTPException } from 'hono/http-exception';
import type { Queues } from '../queues/connection';
import { QUEUES } from '../queues/names';

export const BULL_BOARD_PATH = '/admin/queues';

export interface BullBoardCredentials {
  username: string;
  password: string;
}

/** The dashboard for every queue, every path under it (page, static assets, API) behind Basic auth. */
export function bullBoardRoutes(queues: Queues, credentials: BullBoardCredentials): Hono {
  const adapter = new HonoAdapter(serveStatic).setBasePath(BULL_BOARD_PATH);
  createBullBoard({
    // A finished job is never run again from the board: a rerun of a finished code generation would
    // replace codes already handed out. Failed jobs can be retried (every job is idempotent by its id).
    // (The option is honoured by the base adapter but missing from BullMQAdapter's declared options.)
    queues: Object.values(QUEUES).map((name) => new BullMQAdapter(queues.get(name), { allowCompletedRetries: false } as object)),
    // The adapter (latest 9.10.1) types itself against its own copy of @bull-board/api 9.10.1; it
    // uses the API only through this interface, which 9.10.2 keeps.
    serverAdapter: adapter as unknown as IServerAdapter,
    // Resolved from the installed package, so the assets are found from dist/ as well as from source.
    options: { uiBasePath: dirname(require.resolve('@bull-board/ui/package.json')) },
  });

  const board = new Hono();
  // The API's error handler would turn the 401 into JSON without WWW-Authenticate (no browser prompt).
  board.onError((error) => {
    if (error instanceof HTTPException) return error.getResponse();
    throw error;
  });
  // Compares user and password in constant time (hashes, then an XOR loop over both).
  board.use('*', basicAuth({ username: credentials.username, password: credentials.password, realm: 'Bull Board' }));
  // A browser sends cached Basic credentials with a cross-site form post too: refuse those.
  board.use('*', csrf());
  board.route('/', adapter.registerPlugin());
  return board;
}
