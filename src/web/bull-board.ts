// Bull Board (the queues dashboard) at /admin/queues, behind HTTP Basic auth. Mounted beside the API,
// not under /api/v1, so the API's middleware (trace, rate limits, JWT) stays as it is.
import { createHash, timingSafeEqual } from 'node:crypto';
import { dirname } from 'node:path';
import { createBullBoard } from '@bull-board/api';
import type { IServerAdapter } from '@bull-board/api/typings/app';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { HonoAdapter } from '@bull-board/hono';
import { serveStatic } from '@hono/node-server/serve-static';
import { Hono } from 'hono';
import type { Context, MiddlewareHandler } from 'hono';
import { csrf } from 'hono/csrf';
import type { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { rateLimitKeyPrefixes } from '../core/redis-keys';
import type { Queues } from '../queues/connection';
import { QUEUES } from '../queues/names';
import { errorBody } from './middleware/errors';
import { clientAddress, RateLimitedError } from './middleware/rate-limit';

export const BULL_BOARD_PATH = '/admin/queues';

export interface BullBoardCredentials {
  username: string;
  password: string;
}

/** The shortest password the board accepts (config refuses a shorter BULL_BOARD_PASSWORD too). */
export const MIN_BOARD_PASSWORD_LENGTH = 12;

export interface BoardLockout {
  redis: Redis;
  /** Wrong credentials an address may send per windowS; past that it is refused 429 for blockS. */
  failures: number;
  windowS: number;
  blockS: number;
  trustProxy: boolean;
  /** The rate limits' namespace (`<QUEUE_PREFIX>:rl`, src/core/redis-keys.ts). */
  prefix: string;
}

const sha256 = (text: string) => createHash('sha256').update(text, 'utf8').digest();

/** Constant-time comparison of the Basic credentials a request carries; null when it carries none. */
function credentialsMatch(header: string | undefined, expected: BullBoardCredentials): boolean | null {
  const match = header ? /^Basic ([A-Za-z0-9+/=]+)$/i.exec(header) : null;
  if (!match) return null;
  const decoded = Buffer.from(match[1] as string, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return false;
  // Hashes first, so the comparison takes as long whatever the lengths.
  const user = timingSafeEqual(sha256(decoded.slice(0, colon)), sha256(expected.username));
  const password = timingSafeEqual(sha256(decoded.slice(colon + 1)), sha256(expected.password));
  return user && password;
}

const challenge = (c: Context) => {
  c.header('WWW-Authenticate', 'Basic realm="Bull Board"');
  return c.json(errorBody('UNAUTHENTICATED', 'Basic credentials are required.'), 401);
};

/**
 * HTTP Basic in front of the board, with wrong credentials counted per client address (an IPv6 /64
 * as one): past `failures` within `windowS` the address is refused 429 with Retry-After for
 * `blockS`, right password or not. A request without credentials (a browser's first, before its
 * prompt) is answered the challenge and costs nothing. A wrong guess is counted (one atomic
 * increment) before it is answered, so a burst of concurrent guesses is counted whole.
 */
function basicAuthWithLockout(credentials: BullBoardCredentials, lockout: BoardLockout): MiddlewareHandler {
  const rules = {
    keyPrefix: rateLimitKeyPrefixes(lockout.prefix).boardAuth,
    points: lockout.failures,
    duration: lockout.windowS,
    blockDuration: lockout.blockS,
  };
  const limiter = new RateLimiterRedis({
    ...rules,
    storeClient: lockout.redis,
    rejectIfRedisNotReady: true,
    inMemoryBlockOnConsumed: lockout.failures + 1,
    inMemoryBlockDuration: lockout.blockS,
    insuranceLimiter: new RateLimiterMemory(rules),
  });
  const refusal = (c: Context, msBeforeNext: number) => {
    const error = new RateLimitedError(msBeforeNext, 'Too many wrong credentials');
    c.header('Retry-After', String(error.retryAfterS));
    return c.json(errorBody('RATE_LIMITED', error.message), 429);
  };
  return async (c, next) => {
    const verdict = credentialsMatch(c.req.header('authorization'), credentials);
    if (verdict === null) return challenge(c);
    const address = clientAddress(c, lockout.trustProxy);
    if (verdict) {
      const state = await limiter.get(address).catch(() => null);
      if (state && state.consumedPoints > lockout.failures) return refusal(c, Math.max(state.msBeforeNext, 1));
      return next();
    }
    try {
      await limiter.consume(address);
    } catch (error) {
      if (error instanceof RateLimiterRes) return refusal(c, Math.max(error.msBeforeNext, 1));
    }
    return challenge(c);
  };
}

/** The dashboard for every queue, every path under it (page, static assets, API) behind Basic auth. */
export function bullBoardRoutes(queues: Queues, credentials: BullBoardCredentials, lockout: BoardLockout): Hono {
  if (credentials.password.length < MIN_BOARD_PASSWORD_LENGTH) {
    throw new Error(`the Bull Board password must be at least ${MIN_BOARD_PASSWORD_LENGTH} characters`);
  }
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
  board.use('*', basicAuthWithLockout(credentials, lockout));
  // A browser sends cached Basic credentials with a cross-site form post too: refuse those.
  board.use('*', csrf());
  board.route('/', adapter.registerPlugin());
  return board;
}
