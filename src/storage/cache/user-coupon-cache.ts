// Users' coupon lists (GET /coupons/users/:userId) cached in Redis: one hash per user, one field
// per query, deleted whole whenever one of the user's coupons changes.
//
// Ordering: a writer deletes the hash after its transaction committed and before its job
// completes, so a client that saw its job finish never reads a stale list. A reader that missed
// puts a fill ticket into the hash before it reads Postgres and stores its page only if the ticket
// is still there: a delete in between took the ticket with it, so a page read before a change is
// never stored after that change's invalidation.
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { writePerTurn } from '../../core/concurrency';
import { config } from '../../core/config';
import { redisKeys } from '../../core/redis-keys';
import { scriptCommands } from '../../core/redis-scripts';

/** The longest a page is served, whatever happens (an invalidation lost with a crashed worker). */
export const USER_COUPON_CACHE_TTL_MS = 5 * 60_000;

// KEYS[1] the user's hash; ARGV: ticket, field, page, ttl ms. Stores only if the ticket survived.
const STORE_FILL = `
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1`;

interface CacheCommands {
  storeUserCouponFill(key: string, ticket: string, field: string, value: string, ttlMs: string): Promise<number>;
}
type CacheRedis = Redis & CacheCommands;

const withCacheScripts = scriptCommands<CacheCommands>({ storeUserCouponFill: { keys: 1, lua: STORE_FILL } });

let client: CacheRedis | 'disabled' | undefined;

/** Binds the cache to the process's Redis connection, or turns it off where no list is served. */
export function initUserCouponCache(redis: Redis | 'disabled'): void {
  client = redis === 'disabled' ? redis : withCacheScripts(redis);
}

/** Reads use the cache only while its connection is up: a list never waits for Redis to come back. */
function reader(): CacheRedis | null {
  return client !== undefined && client !== 'disabled' && client.status === 'ready' ? client : null;
}

/**
 * Invalidations need the connection. Model tests run the writers without one (NODE_ENV=test);
 * anywhere else a missing cache is a wiring mistake that would leave lists stale, so it throws.
 */
function writer(): CacheRedis | null {
  if (client === 'disabled') return null;
  if (client) return client;
  if (config().NODE_ENV === 'test') return null;
  throw new Error('user coupon cache not initialised: call initUserCouponCache() when the process starts');
}

interface Entry<T> {
  at: number;
  value: T;
}

/** The cached value of `field` for the user; null on a miss, a page past the TTL, or no cache. */
export async function readCached<T>(userId: string, field: string): Promise<T | null> {
  const redis = reader();
  const raw = redis && (await redis.hget(redisKeys().userCoupons(userId), field));
  if (!raw) return null;
  const entry = JSON.parse(raw) as Entry<T>;
  return Date.now() - entry.at < USER_COUPON_CACHE_TTL_MS ? entry.value : null;
}

/** Starts a fill: its ticket, or null when there is no cache to fill. Call before reading Postgres. */
export async function beginFill(userId: string): Promise<string | null> {
  const redis = reader();
  if (!redis) return null;
  const key = redisKeys().userCoupons(userId);
  const ticket = `#fill:${randomUUID()}`;
  await Promise.all([redis.hset(key, ticket, '1'), redis.pexpire(key, USER_COUPON_CACHE_TTL_MS)]);
  return ticket;
}

/** Stores what a fill read, unless the user's list was invalidated since beginFill. True if stored. */
export async function finishFill<T>(userId: string, ticket: string, field: string, value: T): Promise<boolean> {
  const redis = reader();
  if (!redis) return false;
  const entry: Entry<T> = { at: Date.now(), value };
  return (
    (await redis.storeUserCouponFill(
      redisKeys().userCoupons(userId),
      ticket,
      field,
      JSON.stringify(entry),
      String(USER_COUPON_CACHE_TTL_MS),
    )) === 1
  );
}

/**
 * The cached value of `field`, else `load()` (Postgres), stored for the next read unless a change
 * came in between. `usable` rejects a cached value the clock has made wrong. Redis trouble costs
 * only the cache: the answer then comes from `load` alone.
 */
export async function readThroughUserCoupons<T>(
  userId: string,
  field: string,
  load: () => Promise<T>,
  usable: (value: T) => boolean = () => true,
): Promise<T> {
  let ticket: string | null = null;
  try {
    const cached = await readCached<T>(userId, field);
    if (cached !== null && usable(cached)) return cached;
    ticket = await beginFill(userId);
  } catch {
    // fall through to Postgres
  }
  const value = await load();
  if (ticket) await finishFill(userId, ticket, field, value).catch(() => false);
  return value;
}

// Keys whose delete failed, sent again with this process's next invalidation: a sweep does not run
// again for the rows it changed. Bounded; beyond that the TTL is the only limit.
const owed = new Set<string>();
const MAX_OWED = 10_000;

/**
 * Drops the cached lists of these users, with those of the other calls of this turn, in one
 * command. Call after the change committed and before its job completes; a failure throws so that
 * the job attempt fails and runs again.
 * (One DEL over many users' keys needs a single Redis node; on a Cluster it would go per slot.)
 */
export async function invalidateUserCoupons(userIds: Iterable<string>): Promise<void> {
  const redis = writer();
  if (!redis) return;
  const keys = [...new Set([...userIds].map((userId) => redisKeys().userCoupons(userId)))];
  if (keys.length === 0 && owed.size === 0) return;
  await deleteTogether({ redis, keys });
}

/** The invalidations asked for in one turn of the event loop (one per checkout job) go as one DEL. */
const deleteTogether = writePerTurn(async (asks: { redis: Redis; keys: string[] }[]) => {
  const keys = new Set(owed);
  for (const ask of asks) for (const key of ask.keys) keys.add(key);
  try {
    if (keys.size > 0) await (asks[0] as { redis: Redis }).redis.del(...keys);
  } catch (error) {
    for (const key of keys) if (owed.size < MAX_OWED) owed.add(key);
    throw error;
  }
  for (const key of keys) owed.delete(key);
});
