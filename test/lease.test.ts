// Leases (src/core/lease.ts) against a real Redis: taken by one token at a time, taken again by the same
// token, given back only by the token that holds it, and ended by their TTL.
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { acquireLease, releaseLease } from '../src/core/lease';
import { createRedis, waitForReady } from '../src/core/redis';
import { uniqueId } from './support/fixtures';

let redis: Redis;

beforeAll(async () => {
  redis = createRedis('client');
  await waitForReady(redis);
});

afterAll(() => redis?.disconnect());

describe('a lease', () => {
  it('is held by one token at a time, and given back only by that token', async () => {
    const key = uniqueId('lease');
    const [mine, theirs] = [randomUUID(), randomUUID()];
    expect(await acquireLease(redis, key, mine, 60_000)).toBe(true);
    expect(await redis.get(key)).toBe(mine);
    const ttl = await redis.pttl(key);
    expect(ttl).toBeGreaterThan(50_000);
    expect(ttl).toBeLessThanOrEqual(60_000);
    // Another token is refused; the holder taking it again is told yes, the lease unchanged.
    expect(await acquireLease(redis, key, theirs, 60_000)).toBe(false);
    expect(await acquireLease(redis, key, mine, 1_000_000)).toBe(true);
    expect(await redis.pttl(key)).toBeLessThanOrEqual(60_000);
    // Only the holder gives it back.
    expect(await releaseLease(redis, key, theirs)).toBe(false);
    expect(await redis.get(key)).toBe(mine);
    expect(await releaseLease(redis, key, mine)).toBe(true);
    expect(await redis.exists(key)).toBe(0);
    expect(await releaseLease(redis, key, mine)).toBe(false);
    // Free again: anyone may take it.
    expect(await acquireLease(redis, key, theirs, 60_000)).toBe(true);
    await redis.del(key);
  });

  it('ends with its TTL, after which another token takes it and the old holder cannot give it back', async () => {
    const key = uniqueId('lease');
    const [late, next] = [randomUUID(), randomUUID()];
    expect(await acquireLease(redis, key, late, 50)).toBe(true);
    await new Promise((r) => setTimeout(r, 120));
    expect(await acquireLease(redis, key, next, 60_000)).toBe(true);
    expect(await releaseLease(redis, key, late)).toBe(false);
    expect(await redis.get(key)).toBe(next);
    await redis.del(key);
  });
});
