// Which request is redeeming a single-use code right now. The first request to claim a code is the
// only one that takes a stock unit for it; the others are told CODE_ALREADY_USED at once, so two
// users typing the same code cannot both hold stock (and push a third request into SOLD_OUT).
// Postgres has the last word: the coupon carries the code's hash under a unique index, so a claim
// lost with Redis, or taken over after it lapsed, can never issue a code twice. A claim is a lease
// (src/core/lease.ts) held by the request's id, so a rerun of the same request holds it still.
import type { Redis } from 'ioredis';
import type { Sequelize } from 'sequelize';
import { acquireLease, releaseLease } from '../core/lease';
import { redisKeys } from '../core/redis-keys';
import { codeIsUsed } from './coupon';

/** A claim outlives any run of its request; one whose job died lapses after this and frees the code. */
const CLAIM_TTL_MS = 10 * 60_000;
/** A code that issued its coupon stays marked this long, sparing later tries a stock unit. */
const USED_TTL_MS = 24 * 3600_000;

/** True when `requestId` holds the code now (it just took it, or an earlier run of it did). */
export async function claimCode(redis: Redis, codeHash: string, requestId: string): Promise<boolean> {
  return acquireLease(redis, redisKeys().codeClaim(codeHash), requestId, CLAIM_TTL_MS);
}

/** The request will not issue with this code after all: let the next one try it. */
export async function releaseCode(redis: Redis, codeHash: string, requestId: string): Promise<void> {
  await releaseLease(redis, redisKeys().codeClaim(codeHash), requestId);
}

/**
 * The request gave up without writing its coupon: frees its claim unless a coupon holds the code
 * (written by a request whose claim lapsed or was lost with Redis), which keeps it marked used.
 * The check and the release are two steps, and a stalled earlier run of the same request may still
 * commit its coupon after the check. Then the code is free in Redis while a coupon holds it: the next
 * redeemer takes a stock unit, Postgres's unique index on coupons.code_hash refuses its coupon, and it
 * is told CODE_ALREADY_USED and gives the unit back; the job view of the stalled request reads its
 * coupon from Postgres. So the window costs a moment of stock, never a second use.
 */
export async function releaseUnusedCode(db: Sequelize, redis: Redis, codeHash: string, requestId: string): Promise<void> {
  if (await codeIsUsed(db, codeHash)) await markCodeUsed(redis, codeHash);
  else await releaseCode(redis, codeHash, requestId);
}

/** The code issued its coupon. */
export async function markCodeUsed(redis: Redis, codeHash: string): Promise<void> {
  await redis.pexpire(redisKeys().codeClaim(codeHash), USED_TTL_MS);
}
