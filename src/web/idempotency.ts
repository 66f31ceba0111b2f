// Idempotency keys for POST /coupons/reserve, much as Stripe promises them: a key is the user's own,
// the same request again gets the first answer, and another request under the same key is refused
// (409 at once while Redis remembers the key, an hour; a rejected job after that). The first answer is a 202 for a job whose
// id derives from (user, key, body), so it is the same answer every time. This Redis record answers
// fast; Postgres decides when it is gone: the reservation a key made keeps the key's request id and
// the body's fingerprint, and the worker refuses another body with IDEMPOTENCY_KEY_REUSED.
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { AppError } from '../core/errors';
import { redisKeys } from '../core/redis-keys';
import { notQueued } from '../queues/enqueue';
import { bodyFingerprint } from '../queues/jobs';
import { reserveRequestId } from '../queues/names';

/** How long an issue request's Idempotency-Key is remembered: as long as the outcomes of a sale. */
export const IDEMPOTENCY_TTL_SECONDS = 24 * 3600;

/**
 * How long Redis remembers a reserve's Idempotency-Key: an hour, not a day, because Postgres holds
 * what a key reserved for good (I8) and a day of keys at 1,000 checkouts a second would be 86
 * million records. Past it, a replay is answered from the reservation, another body is a job the
 * worker rejects IDEMPOTENCY_KEY_REUSED.
 */
export const RESERVE_KEY_TTL_SECONDS = 3600;

/** Printable ASCII without spaces, 1-255 characters: UUIDs, ULIDs and the like. */
export const idempotencyKeySchema = z.string().regex(/^[\x21-\x7e]{1,255}$/, '1-255 printable ASCII characters without spaces');

/** Keys are scoped to the user: two users may send the same key without meeting. */
const redisKeyOf = (userId: string, key: string) => redisKeys().idempotency(reserveRequestId(userId, key));

/** A stable digest of a JSON body: key order does not matter. */
export const fingerprint = bodyFingerprint;

/**
 * Claims `key` for this user and body. Resolves when the request may go ahead (first time, or the same
 * request again); throws 409 IDEMPOTENCY_KEY_REUSED for another body, 503 when Redis cannot answer.
 */
export async function claimIdempotencyKey(redis: Redis, userId: string, key: string, bodyFingerprint: string): Promise<'first' | 'replay'> {
  const redisKey = redisKeyOf(userId, key);
  let previous: unknown;
  try {
    // One round trip: set if absent, and read what was there.
    previous = await redis.call('SET', redisKey, bodyFingerprint, 'NX', 'GET', 'EX', String(RESERVE_KEY_TTL_SECONDS));
  } catch (error) {
    throw notQueued(error);
  }
  if (previous === null) return 'first';
  if (previous === bodyFingerprint) return 'replay';
  throw new AppError('IDEMPOTENCY_KEY_REUSED', 'This Idempotency-Key was used with another request body.');
}
