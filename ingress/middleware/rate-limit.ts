// Rate limits counted in Redis, so a budget holds across web processes: requests per client address
// (before authentication) and per user (after it) on every /api/v1 route, and the brute-force guard
// for wrong coupon codes. A limiter never fails a request: while Redis is not ready each process
// counts in memory instead (the insurance limiter), and anything else unexpected lets the request by.
import { getConnInfo } from '@hono/node-server/conninfo';
import type { Context, MiddlewareHandler } from 'hono';
import type { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { config } from '../../core/config';
import { AppError } from '../../core/errors';
import { logger } from '../../core/logger';
import type { AppEnv } from '../context';

/** `points` per window of `durationS` seconds; 0 points turns the limiter off. */
export interface Budget {
  points: number;
  durationS: number;
}

/** The address of a request that came without a socket (`app.request()` in tests). */
export const UNKNOWN_ADDRESS = 'unknown';

/** A 429 whose Retry-After header (whole seconds, at least 1) the error handler writes. */
export class RateLimitedError extends AppError {
  readonly retryAfterS: number;

  constructor(msBeforeNext: number, what = 'Too many requests') {
    const retryAfterS = msBeforeNext > 0 ? Math.ceil(msBeforeNext / 1000) : 1;
    super('RATE_LIMITED', `${what}; retry in ${retryAfterS} s.`);
    this.retryAfterS = retryAfterS;
  }
}

const defaultPrefix = () => `${config().QUEUE_PREFIX}:rl`;

function clientAddress(c: Context<AppEnv>, trustProxy: boolean): string {
  if (trustProxy) {
    const forwarded = c.req.header('x-forwarded-for');
    if (forwarded) {
      // The last entry is the one our proxy appended (the address it saw); anything left of it came
      // from the client and could be made up. Capped: the value becomes part of a Redis key.
      const last = forwarded.slice(forwarded.lastIndexOf(',') + 1).trim().slice(0, 64);
      if (last) return last;
    }
  }
  if (!c.env) return UNKNOWN_ADDRESS;
  try {
    return getConnInfo(c).remote.address ?? UNKNOWN_ADDRESS;
  } catch {
    return UNKNOWN_ADDRESS;
  }
}

/** Counts requests per key; resolves to the ms until the key may go again when over budget, else 0. */
function requestCounter(redis: Redis, keyPrefix: string, budget: Budget): ((key: string) => Promise<number>) | undefined {
  if (budget.points <= 0) return undefined;
  const limiter = new RateLimiterRedis({
    storeClient: redis,
    keyPrefix,
    points: budget.points,
    duration: budget.durationS,
    // One round trip per request: a key that used its budget is refused from memory until its
    // window ends, so a flood costs this process nothing in Redis.
    inMemoryBlockOnConsumed: budget.points,
    // Not ready (down, reconnecting): count in this process's memory at once rather than wait.
    rejectIfRedisNotReady: true,
    insuranceLimiter: new RateLimiterMemory({ keyPrefix, points: budget.points, duration: budget.durationS }),
  });
  return (key) =>
    limiter.consume(key).then(
      () => 0,
      (refusal: unknown) => {
        if (refusal instanceof RateLimiterRes) return Math.max(refusal.msBeforeNext, 1);
        throw refusal;
      },
    );
}

function limitBy(
  count: ((key: string) => Promise<number>) | undefined,
  keyOf: (c: Context<AppEnv>) => string,
): MiddlewareHandler<AppEnv> {
  if (!count) return (_c, next) => next();
  return async (c, next) => {
    let waitMs = 0;
    try {
      waitMs = await count(keyOf(c));
    } catch (error) {
      c.get('log').warn({ err: error }, 'rate limiter failed; request let through');
    }
    if (waitMs > 0) throw new RateLimitedError(waitMs);
    await next();
  };
}

export interface AddressLimitOptions {
  redis: Redis;
  /** Default RATE_LIMIT_IP_POINTS per RATE_LIMIT_IP_DURATION_S. */
  budget?: Budget;
  /** Default TRUST_PROXY: the last X-Forwarded-For entry (the one our proxy appended) instead of the socket's address. */
  trustProxy?: boolean;
  /** Default `${QUEUE_PREFIX}:rl`. */
  prefix?: string;
}

/**
 * Requests per client address; goes before authentication, so floods of bad tokens count too. Sets
 * `clientIp` (also when the budget is 0) for the handlers and the code guard.
 */
export function limitByAddress(opts: AddressLimitOptions): MiddlewareHandler<AppEnv> {
  const budget = opts.budget ?? { points: config().RATE_LIMIT_IP_POINTS, durationS: config().RATE_LIMIT_IP_DURATION_S };
  const trustProxy = opts.trustProxy ?? config().TRUST_PROXY;
  const limit = limitBy(requestCounter(opts.redis, `${opts.prefix ?? defaultPrefix()}:ip`, budget), (c) => c.get('clientIp'));
  return (c, next) => {
    c.set('clientIp', clientAddress(c, trustProxy));
    return limit(c, next);
  };
}

export interface UserLimitOptions {
  redis: Redis;
  /** Default RATE_LIMIT_USER_POINTS per RATE_LIMIT_USER_DURATION_S. */
  budget?: Budget;
  prefix?: string;
}

/** Requests per authenticated user; goes after authenticate. */
export function limitByUser(opts: UserLimitOptions): MiddlewareHandler<AppEnv> {
  const budget = opts.budget ?? { points: config().RATE_LIMIT_USER_POINTS, durationS: config().RATE_LIMIT_USER_DURATION_S };
  return limitBy(requestCounter(opts.redis, `${opts.prefix ?? defaultPrefix()}:user`, budget), (c) => c.get('user').id);
}

// ---------------------------------------------------------------------------------------------
// Wrong coupon codes

export interface CodeAttempt {
  userId: string;
  /** c.get('clientIp') */
  ip: string;
}

/**
 * The brute-force guard for coupon codes, per user and per client address. Whoever checks a code
 * (the issue route, handed the guard by createApp) calls:
 *
 *   const who = { userId: c.get('user').id, ip: c.get('clientIp') };
 *   await guard.assertNotBlocked(who);        // before looking the code up; consumes nothing
 *   if (!found) {
 *     await guard.recordWrongCode(who);       // only for a code that does not exist
 *     throw new AppError('CODE_NOT_FOUND');
 *   }
 *
 * Both throw a RateLimitedError (429 RATE_LIMITED with Retry-After) and nothing else: Redis trouble
 * falls back to memory, so a caller need not handle other errors. A user or address may send
 * `perUser`/`perAddress` wrong codes within `windowS`; the last of them is still answered as a
 * wrong code but blocks that user or address for `blockS`, and assertNotBlocked refuses every later
 * attempt, right code or wrong, until then. recordWrongCode itself throws only for an attempt past
 * the budget (requests that raced past assertNotBlocked, or another process's).
 */
export interface CodeGuard {
  assertNotBlocked(who: CodeAttempt): Promise<void>;
  recordWrongCode(who: CodeAttempt): Promise<void>;
}

export interface CodeGuardOptions {
  redis: Redis;
  /** Defaults CODE_FAILURES_PER_USER, CODE_FAILURES_PER_IP (0: that guard is off), CODE_FAILURE_WINDOW_S, CODE_FAILURE_BLOCK_S. */
  perUser?: number;
  perAddress?: number;
  windowS?: number;
  blockS?: number;
  prefix?: string;
}

/** The in-memory blocks of a Redis limiter, which its get() does not consult (untyped upstream). */
type WithMemoryBlocks = { getInMemoryBlockMsBeforeExpire(rlKey: string): number };

/** Wrong codes of one kind of key; both methods resolve to the ms the key stays blocked, or 0. */
function failureCounter(redis: Redis, keyPrefix: string, allowed: number, windowS: number, blockS: number) {
  if (allowed <= 0) return undefined;
  // The library blocks on the first consume past `points`: with allowed - 1 that is the allowed-th
  // failure, which is the one that starts the block.
  const rules = { keyPrefix, points: allowed - 1, duration: windowS, blockDuration: blockS };
  const limiter = new RateLimiterRedis({
    ...rules,
    storeClient: redis,
    inMemoryBlockOnConsumed: allowed,
    inMemoryBlockDuration: blockS,
    rejectIfRedisNotReady: true,
    insuranceLimiter: new RateLimiterMemory(rules),
  });
  return {
    async blockedMs(key: string): Promise<number> {
      const inMemory = (limiter as unknown as WithMemoryBlocks).getInMemoryBlockMsBeforeExpire(limiter.getKey(key));
      if (inMemory > 0) return inMemory;
      const state = await limiter.get(key);
      return state && state.consumedPoints >= allowed ? Math.max(state.msBeforeNext, 1) : 0;
    },
    async fail(key: string): Promise<number> {
      try {
        await limiter.consume(key);
        return 0;
      } catch (refusal) {
        if (!(refusal instanceof RateLimiterRes)) throw refusal;
        // Exactly `allowed`: this failure used the last one (and started the block). A key refused from
        // memory reports 0 consumed: past the budget too.
        return refusal.consumedPoints === allowed ? 0 : Math.max(refusal.msBeforeNext, 1);
      }
    },
  };
}

export function createCodeGuard(opts: CodeGuardOptions): CodeGuard {
  const prefix = opts.prefix ?? defaultPrefix();
  const windowS = opts.windowS ?? config().CODE_FAILURE_WINDOW_S;
  const blockS = opts.blockS ?? config().CODE_FAILURE_BLOCK_S;
  const byUser = failureCounter(opts.redis, `${prefix}:code-user`, opts.perUser ?? config().CODE_FAILURES_PER_USER, windowS, blockS);
  const byAddress = failureCounter(opts.redis, `${prefix}:code-ip`, opts.perAddress ?? config().CODE_FAILURES_PER_IP, windowS, blockS);
  const worst = async (checks: (Promise<number> | undefined)[]): Promise<number> => {
    try {
      return Math.max(0, ...(await Promise.all(checks)).map((ms) => ms ?? 0));
    } catch (error) {
      logger().warn({ err: error }, 'code guard failed; attempt let through');
      return 0;
    }
  };
  const refuse = (ms: number) => {
    if (ms > 0) throw new RateLimitedError(ms, 'Too many wrong coupon codes');
  };
  return {
    async assertNotBlocked({ userId, ip }) {
      refuse(await worst([byUser?.blockedMs(userId), byAddress?.blockedMs(ip)]));
    },
    async recordWrongCode({ userId, ip }) {
      refuse(await worst([byUser?.fail(userId), byAddress?.fail(ip)]));
    },
  };
}
