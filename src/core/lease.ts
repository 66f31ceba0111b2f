// A lease in Redis: a key whose value names its holder (a token) and whose TTL ends it should the
// holder die. Taking it sets the key only when it is free, or answers yes when the same token holds
// it already (a rerun of the same work); giving it back deletes the key only while that token still
// holds it, so a holder whose lease lapsed and was taken by another never deletes the other's.
// (src/core/lock.ts is redlock, for work that waits its turn; this is for the take-or-skip cases.)
import type { Redis } from 'ioredis';
import { scriptCommands } from './redis-scripts';

// KEYS[1] the lease; ARGV: token, ttl ms. 1 when the token holds it now (the TTL is left as it was
// when it held it already), 0 when another token does.
const ACQUIRE = `
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == ARGV[1] then return 1 end
return 0`;

// KEYS[1] the lease; ARGV[1] token. 1 when deleted, 0 when another token (or none) holds it.
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

interface LeaseCommands {
  acquireLease(key: string, token: string, ttlMs: string): Promise<number>;
  releaseLease(key: string, token: string): Promise<number>;
}

const withLeaseScripts = scriptCommands<LeaseCommands>({
  acquireLease: { keys: 1, lua: ACQUIRE },
  releaseLease: { keys: 1, lua: RELEASE },
});

/** True when `token` holds the lease `key` now: it just took it (for `ttlMs`), or held it already. */
export async function acquireLease(redis: Redis, key: string, token: string, ttlMs: number): Promise<boolean> {
  return (await withLeaseScripts(redis).acquireLease(key, token, String(ttlMs))) === 1;
}

/** Gives the lease back if `token` still holds it; true when it did. */
export async function releaseLease(redis: Redis, key: string, token: string): Promise<boolean> {
  return (await withLeaseScripts(redis).releaseLease(key, token)) === 1;
}
