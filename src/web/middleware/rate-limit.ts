// Rate limits counted in Redis, so a budget holds across web processes: requests per client address
// (before authentication) and per user (after it) on every /api/v1 route, and the brute-force guard
// for wrong coupon codes. A limiter never fails a request: while Redis is not ready each process
// counts in memory instead (the insurance limiter), and anything else unexpected lets the request by.
import { isIPv6 } from 'node:net';
import { getConnInfo } from '@hono/node-server/conninfo';
import type { Context, MiddlewareHandler } from 'hono';
import type { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { config } from '../../core/config';
import { AppError } from '../../core/errors';
import { logger } from '../../core/logger';
import { rateLimitKeyPrefixes, redisKeys } from '../../core/redis-keys';
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

/** The limiters' keys: src/core/redis-keys.ts rateLimitKeyPrefixes under `<QUEUE_PREFIX>:rl`, or a test's own namespace. */
const keyPrefixes = (namespace = redisKeys().rateLimitNamespace()) => rateLimitKeyPrefixes(namespace);

/** The eight 16-bit groups of an IPv6 address (without zone), or null when it is not one. */
function ipv6Groups(address: string): number[] | null {
  if (!isIPv6(address)) return null;
  let text = address;
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::') as [string, string | undefined];
  const parse = (part: string) => (part ? part.split(':').map((h) => parseInt(h, 16)) : []);
  const left = parse(head);
  const right = parse(tail ?? '');
  return tail === undefined ? left : [...left, ...Array<number>(8 - left.length - right.length).fill(0), ...right];
}

/**
 * The key a client address is budgeted under. An IPv6 client usually holds a whole /64 (one
 * customer's prefix) and can pick a fresh address in it for every request, so every address of a
 * /64 counts as one: `2001:db8:1:2::/64`. An IPv4-mapped address (`::ffff:198.51.100.7`) is its IPv4
 * address; IPv4 addresses and anything else are kept as they are.
 */
export function budgetAddress(address: string): string {
  const bare = address.replace(/%.*$/, '');
  const groups = ipv6Groups(bare);
  if (!groups) return bare;
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    const [hi = 0, lo = 0] = groups.slice(6);
    return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  }
  return `${groups
    .slice(0, 4)
    .map((g) => g.toString(16))
    .join(':')}::/64`;
}

/** The client's address as budgets count it (budgetAddress): the socket's, or with trustProxy the last X-Forwarded-For entry. */
export function clientAddress(c: Context, trustProxy: boolean): string {
  if (trustProxy) {
    const forwarded = c.req.header('x-forwarded-for');
    if (forwarded) {
      // The last entry is the one our proxy appended (the address it saw); anything left of it came
      // from the client and could be made up. Capped: the value becomes part of a Redis key.
      const last = forwarded
        .slice(forwarded.lastIndexOf(',') + 1)
        .trim()
        .slice(0, 64);
      if (last) return budgetAddress(last);
    }
  }
  if (!c.env) return UNKNOWN_ADDRESS;
  try {
    return budgetAddress(getConnInfo(c).remote.address ?? UNKNOWN_ADDRESS);
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

function limitBy(count: ((key: string) => Promise<number>) | undefined, keyOf: (c: Context<AppEnv>) => string): MiddlewareHandler<AppEnv> {
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
  /** The limiters' namespace; default `<QUEUE_PREFIX>:rl` (src/core/redis-keys.ts). */
  prefix?: string;
}

/**
 * Requests per client address; goes before authentication, so floods of bad tokens count too. Sets
 * `clientIp` (also when the budget is 0) for the handlers and the code guard.
 */
export function limitByAddress(opts: AddressLimitOptions): MiddlewareHandler<AppEnv> {
  const budget = opts.budget ?? { points: config().RATE_LIMIT_IP_POINTS, durationS: config().RATE_LIMIT_IP_DURATION_S };
  const trustProxy = opts.trustProxy ?? config().TRUST_PROXY;
  const limit = limitBy(requestCounter(opts.redis, keyPrefixes(opts.prefix).address, budget), (c) => c.get('clientIp'));
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
  return limitBy(requestCounter(opts.redis, keyPrefixes(opts.prefix).user, budget), (c) => c.get('user').id);
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
 *   await guard.takeAttempt(who);             // before looking the code up: counts it at once
 *   if (found) await guard.refundAttempt(who); // a code that exists costs nothing
 *
 * An attempt is counted (one atomic increment in Redis per budget) before the lookup, so a burst of
 * concurrent guesses cannot all pass a check before any is counted: of any number sent at once, at
 * most the budget get looked up. A user or address may send `perUser`/`perAddress` wrong codes
 * within `windowS`; the attempt after that is refused and blocks that user or address, for any code,
 * right or wrong, for `blockS`. takeAttempt throws a RateLimitedError (429 RATE_LIMITED with
 * Retry-After) and nothing else: Redis trouble falls back to memory, so a caller need not handle
 * other errors. refundAttempt never throws.
 */
export interface CodeGuard {
  takeAttempt(who: CodeAttempt): Promise<void>;
  refundAttempt(who: CodeAttempt): Promise<void>;
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

/** Code attempts of one kind of key: take resolves to the ms the key stays blocked (0: go ahead). */
function attemptCounter(redis: Redis, keyPrefix: string, allowed: number, windowS: number, blockS: number) {
  if (allowed <= 0) return undefined;
  // The library refuses, and blocks for blockDuration, the first consume past `points`.
  const rules = { keyPrefix, points: allowed, duration: windowS, blockDuration: blockS };
  const limiter = new RateLimiterRedis({
    ...rules,
    storeClient: redis,
    // A key past its budget is refused from memory for the block, without a Redis round trip.
    inMemoryBlockOnConsumed: allowed + 1,
    inMemoryBlockDuration: blockS,
    rejectIfRedisNotReady: true,
    insuranceLimiter: new RateLimiterMemory(rules),
  });
  return {
    take: (key: string): Promise<number> =>
      limiter.consume(key).then(
        () => 0,
        (refusal: unknown) => {
          if (refusal instanceof RateLimiterRes) return Math.max(refusal.msBeforeNext, 1);
          throw refusal;
        },
      ),
    refund: (key: string): Promise<unknown> => limiter.reward(key, 1),
  };
}

export function createCodeGuard(opts: CodeGuardOptions): CodeGuard {
  const prefixes = keyPrefixes(opts.prefix);
  const windowS = opts.windowS ?? config().CODE_FAILURE_WINDOW_S;
  const blockS = opts.blockS ?? config().CODE_FAILURE_BLOCK_S;
  const byUser = attemptCounter(opts.redis, prefixes.codeUser, opts.perUser ?? config().CODE_FAILURES_PER_USER, windowS, blockS);
  const byAddress = attemptCounter(opts.redis, prefixes.codeAddress, opts.perAddress ?? config().CODE_FAILURES_PER_IP, windowS, blockS);
  const counted = (who: CodeAttempt) =>
    [byUser && { counter: byUser, key: who.userId }, byAddress && { counter: byAddress, key: who.ip }].filter((x) => !!x);
  const refund = async (entries: ReturnType<typeof counted>) => {
    await Promise.all(entries.map(({ counter, key }) => counter.refund(key))).catch((error: unknown) =>
      logger().warn({ err: error }, 'code guard refund failed'),
    );
  };
  return {
    async takeAttempt(who) {
      const entries = counted(who);
      let waits: number[];
      try {
        waits = await Promise.all(entries.map(({ counter, key }) => counter.take(key)));
      } catch (error) {
        logger().warn({ err: error }, 'code guard failed; attempt let through');
        return;
      }
      const worst = Math.max(0, ...waits);
      if (worst === 0) return;
      // Refused by one budget: the others give back what this attempt took from them.
      await refund(entries.filter((_, i) => waits[i] === 0));
      throw new RateLimitedError(worst, 'Too many wrong coupon codes');
    },
    async refundAttempt(who) {
      await refund(counted(who));
    },
  };
}
