// Idempotency keys for POST /coupons/reserve, much as Stripe promises them: a key is the user's own,
// the same request again gets the first answer, and another request under the same key is refused
// with 409. The first answer is a 202 for a job whose id derives from (user, key, body), so it is the
// same answer every time. Redis remembers a key an hour and answers fast; Postgres holds what a key
// reserved for good (the reservation keeps the key's request id and the body's fingerprint), so once
// Redis has forgotten the key the web asks Postgres before it lets another body through (I8 from
// Postgres alone), and the worker refuses such a body again (IDEMPOTENCY_KEY_REUSED) should it race.
import type { Redis } from 'ioredis';
import type { Sequelize } from 'sequelize';
import { z } from 'zod';
import { AppError } from '../core/errors';
import { isSameReserveRequest, type ReserveRequestFacts } from '../domain/checkout-rules';
import { reservedUnder } from '../storage/reservation';
import { redisKeys } from '../core/redis-keys';
import { notQueued } from '../queues/enqueue';
import { bodyFingerprint } from '../queues/jobs';
import { reserveRequestId } from '../queues/names';

/** How long an issue request's Idempotency-Key is remembered: as long as the outcomes of a sale. */
export const IDEMPOTENCY_TTL_SECONDS = 24 * 3600;

/**
 * How long Redis remembers a reserve's Idempotency-Key: an hour, not a day, because Postgres holds
 * what a key reserved for good (I8) and a day of keys at 1,000 checkouts a second would be 86
 * million records. Past it, Postgres tells a replay (the key's reservation was made for this body)
 * from another body (409).
 */
export const RESERVE_KEY_TTL_SECONDS = 3600;

/** Printable ASCII without spaces, 1-255 characters: UUIDs, ULIDs and the like. */
export const idempotencyKeySchema = z.string().regex(/^[\x21-\x7e]{1,255}$/, '1-255 printable ASCII characters without spaces');

/** Keys are scoped to the user: two users may send the same key without meeting. */
const redisKeyOf = (userId: string, key: string) => redisKeys().idempotency(reserveRequestId(userId, key));

/** A stable digest of a JSON body: key order does not matter. */
export const fingerprint = bodyFingerprint;

/** The request a key is claimed for: its body's facts and fingerprint. */
export type AskedReserve = ReserveRequestFacts & { fingerprint: string };

const reusedKey = () => new AppError('IDEMPOTENCY_KEY_REUSED', 'This Idempotency-Key was used with another request body.');

/**
 * Claims `key` for this user and body. Resolves when the request may go ahead (first time, or the same
 * request again); throws 409 IDEMPOTENCY_KEY_REUSED for another body, 503 when Redis cannot answer.
 * A key Redis does not know is looked up in Postgres: the reservation it made, if any, decides.
 */
export async function claimIdempotencyKey(
  redis: Redis,
  db: Sequelize,
  userId: string,
  key: string,
  asked: AskedReserve,
): Promise<'first' | 'replay'> {
  const redisKey = redisKeyOf(userId, key);
  let previous: unknown;
  try {
    // One round trip: set if absent, and read what was there.
    previous = await redis.call('SET', redisKey, asked.fingerprint, 'NX', 'GET', 'EX', String(RESERVE_KEY_TTL_SECONDS));
  } catch (error) {
    throw notQueued(error);
  }
  if (previous === asked.fingerprint) return 'replay';
  if (previous !== null) throw reusedKey();
  const made = await reservedUnder(db, reserveRequestId(userId, key));
  if (made === null) return 'first';
  if (isSameReserveRequest(made, asked)) return 'replay';
  // Bind the record to the body that reserved, so the next try of this body is refused in Redis.
  await rebind(redis, redisKey, made.fingerprint);
  throw reusedKey();
}

/** Best effort: should Redis not answer, the worker still refuses this body (IDEMPOTENCY_KEY_REUSED). */
async function rebind(redis: Redis, redisKey: string, reservedWith: string | null): Promise<void> {
  try {
    if (reservedWith === null) await redis.del(redisKey);
    else await redis.call('SET', redisKey, reservedWith, 'XX', 'KEEPTTL');
  } catch {
    // The 409 stands either way.
  }
}
