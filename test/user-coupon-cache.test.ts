// A user's coupon list is cached in Redis and dropped whenever one of the user's coupons changes:
// over HTTP against the real web and worker, a list read right after a change's job finished is
// never stale; in-process, a fill that raced with a change is not stored, a cached page turns
// EXPIRED on time, and a second read is answered from Redis.
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { config } from '../src/core/config';
import { closeSequelize, sequelize } from '../src/core/postgres';
import { createRedis, waitForReady } from '../src/core/redis';
import { redisKeys } from '../src/core/redis-keys';
import { initModels } from '../src/storage';
import { listUserCoupons } from '../src/storage/coupon';
import { beginFill, finishFill, initUserCouponCache, invalidateUserCoupons, readCached } from '../src/storage/cache/user-coupon-cache';
import { createCheckoutPolicy, eventually, reserveAndSettle, shopperWith, type Shopper } from './support/checkout';
import { closeDb, db, freshDatabase } from './support/db';
import { uniqueId } from './support/fixtures';
import { Api } from './support/http';
import { startStack, type Stack } from './support/stack';
import { adminToken } from './support/tokens';

let stack: Stack;
let api: Api;
let redis: Redis;
let policyId: string;

// Its own database: another test file's sweeper would release reservations here and invalidate
// under its own queue prefix. One prefix for the stack and this process: the same cache keys.
const shared = { DATABASE_URL: process.env.DATABASE_URL, QUEUE_PREFIX: process.env.QUEUE_PREFIX };
const prefix = uniqueId('ucl');

beforeAll(async () => {
  process.env.DATABASE_URL = await freshDatabase('coupons_test_user_cache');
  process.env.QUEUE_PREFIX = prefix;
  expect(config().QUEUE_PREFIX).toBe(prefix);
  stack = await startStack({
    workers: 1,
    name: 'user-coupon-cache',
    env: { DATABASE_URL: process.env.DATABASE_URL, QUEUE_PREFIX: prefix },
  });
  api = new Api(stack.baseUrl, 16);
  initModels(sequelize());
  redis = createRedis('client');
  await waitForReady(redis);
  initUserCouponCache(redis);
  policyId = await createCheckoutPolicy(api);
});

afterAll(async () => {
  await api?.close();
  await stack?.stop();
  redis?.disconnect();
  await closeSequelize();
  await closeDb();
  Object.assign(process.env, shared);
});

const ids = (page: { data: { id: string }[] }) => page.data.map((c) => c.id);
const statuses = (page: { data: { status: string }[] }) => page.data.map((c) => c.status);
/** The queries cached for the user (fill tickets left out). */
const cachedQueries = async (userId: string) =>
  (await redis.hkeys(redisKeys().userCoupons(userId))).filter((f) => f.startsWith('q:')).sort();

async function list(shopper: Shopper, query = '') {
  const reply = await api.get(`/api/v1/coupons/users/${shopper.id}${query}`, shopper.token);
  expect(reply.status).toBe(200);
  return reply.body as { data: { id: string; status: string }[]; nextCursor: string | null };
}

/** Lists twice (the second read comes from the cache) and checks the query is cached. */
async function listCached(shopper: Shopper, query = '') {
  const first = await list(shopper, query);
  expect(await list(shopper, query)).toEqual(first);
  expect((await cachedQueries(shopper.id)).length).toBeGreaterThan(0);
  return first;
}

async function settled(reply: { status: number; body: { jobId: string } }, token: string) {
  expect(reply.status).toBe(202);
  const job = await api.settle(reply.body.jobId, token);
  expect(job.status).toBe('succeeded');
  return job;
}

describe('over HTTP, a list read after a change is never stale', () => {
  it('shows a coupon issued after the list was cached', async () => {
    const shopper = await shopperWith(api, policyId);
    expect(ids(await listCached(shopper))).toEqual(shopper.coupons);
    expect(ids(await listCached(shopper, '?status=AVAILABLE'))).toEqual(shopper.coupons);
    expect(await cachedQueries(shopper.id)).toEqual(['q:*:20:', 'q:AVAILABLE:20:']);

    const job = await settled(await api.post('/api/v1/coupons/issue', shopper.token, { policyId }), shopper.token);
    expect(await cachedQueries(shopper.id)).toEqual([]);
    expect(ids(await list(shopper))).toEqual([job.result.id, ...shopper.coupons]);
    expect(ids(await list(shopper, '?status=AVAILABLE'))).toEqual([job.result.id, ...shopper.coupons]);
  });

  it('shows RESERVED after a reserve, AVAILABLE after a cancel, USED after a confirm', async () => {
    const shopper = await shopperWith(api, policyId);
    const [couponId] = shopper.coupons as [string];
    expect(statuses(await listCached(shopper))).toEqual(['AVAILABLE']);
    expect(ids(await listCached(shopper, '?status=RESERVED'))).toEqual([]);

    const reserved = await reserveAndSettle(api, shopper, couponId);
    expect(reserved.status).toBe('succeeded');
    expect(statuses(await listCached(shopper))).toEqual(['RESERVED']);
    expect(ids(await listCached(shopper, '?status=RESERVED'))).toEqual([couponId]);
    expect(ids(await listCached(shopper, '?status=AVAILABLE'))).toEqual([]);

    await settled(await api.post(`/api/v1/coupons/reservations/${reserved.result.reservationId}/cancel`, shopper.token), shopper.token);
    expect(statuses(await listCached(shopper))).toEqual(['AVAILABLE']);
    expect(ids(await listCached(shopper, '?status=RESERVED'))).toEqual([]);

    const again = await reserveAndSettle(api, shopper, couponId);
    expect(statuses(await listCached(shopper))).toEqual(['RESERVED']);
    const admin = await adminToken();
    await settled(await api.post(`/api/v1/coupons/reservations/${again.result.reservationId}/confirm`, admin), admin);
    expect(statuses(await list(shopper))).toEqual(['USED']);
    expect(ids(await list(shopper, '?status=USED'))).toEqual([couponId]);
  });

  it('shows AVAILABLE once the sweeper ended a reservation nobody paid for', async () => {
    const shopper = await shopperWith(api, policyId);
    const reserved = await reserveAndSettle(api, shopper, shopper.coupons[0] as string);
    expect(statuses(await listCached(shopper))).toEqual(['RESERVED']);
    await db().query("UPDATE reservations SET expires_at = now() - interval '1 second' WHERE id = $1", [reserved.result.reservationId]);
    // Without the sweeper's invalidation the cached RESERVED would stay for the TTL (5 minutes).
    await eventually(
      () => list(shopper),
      (page) => page.data[0]?.status === 'AVAILABLE',
      10_000,
      'the list shows the coupon back',
    );
  });
});

/** Writes a coupon straight into Postgres: no job, so no invalidation (the cache does not hear of it). */
async function insertCoupon(userId: string, expiresAt: Date, issuedAt = new Date()): Promise<string> {
  const id = randomUUID();
  await db().query('INSERT INTO coupons (id, policy_id, user_id, request_id, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)', [
    id,
    policyId,
    userId,
    `direct-${id}`,
    issuedAt,
    expiresAt,
  ]);
  return id;
}

const inAnHour = () => new Date(Date.now() + 3_600_000);

describe('the cache itself', () => {
  it('drops a fill that began before an invalidation', async () => {
    const userId = uniqueId('race');
    const key = redisKeys().userCoupons(userId);
    const ticket = await beginFill(userId);
    expect(ticket).not.toBeNull();
    // The fill's Postgres read happens here, before the change commits; the writer then invalidates.
    await invalidateUserCoupons([userId]);
    expect(await finishFill(userId, ticket as string, 'q:test', { rows: ['stale'] })).toBe(false);
    expect(await readCached(userId, 'q:test')).toBeNull();
    expect(await redis.exists(key)).toBe(0);

    // Two fills at once, neither raced by a change: both stored, their tickets gone.
    const [a, b] = await Promise.all([beginFill(userId), beginFill(userId)]);
    expect(await finishFill(userId, a as string, 'q:a', 'A')).toBe(true);
    expect(await finishFill(userId, b as string, 'q:b', 'B')).toBe(true);
    expect(await readCached(userId, 'q:a')).toBe('A');
    expect((await redis.hkeys(key)).sort()).toEqual(['q:a', 'q:b']);
    expect(await redis.pttl(key)).toBeGreaterThan(0);
    // A ticket only counts once.
    expect(await finishFill(userId, a as string, 'q:a', 'again')).toBe(false);
    expect(await readCached(userId, 'q:a')).toBe('A');
  });

  it('answers a second read from Redis, the same as from Postgres, until the user is invalidated', async () => {
    const userId = uniqueId('hit');
    const older = await insertCoupon(userId, inAnHour(), new Date(Date.now() - 2_000));
    const newer = await insertCoupon(userId, inAnHour(), new Date(Date.now() - 1_000));
    const fromPostgres = await listUserCoupons({ userId, limit: 1 });
    expect(fromPostgres.data.map((c) => c.id)).toEqual([newer]);
    expect(fromPostgres.nextCursor).not.toBeNull();
    expect(await cachedQueries(userId)).toEqual(['q:*:1:']);

    // A row the cache never heard of: a read that went to Postgres would show it first.
    const hidden = await insertCoupon(userId, inAnHour());
    const fromRedis = await listUserCoupons({ userId, limit: 1 });
    expect(fromRedis).toEqual(fromPostgres);
    expect(JSON.stringify(fromRedis)).toBe(JSON.stringify(fromPostgres));

    await invalidateUserCoupons([userId]);
    expect((await listUserCoupons({ userId, limit: 5 })).data.map((c) => c.id)).toEqual([hidden, newer, older]);
  });

  it('shows a cached coupon EXPIRED once its expiresAt passed, and refetches an AVAILABLE page then', async () => {
    const userId = uniqueId('exp');
    // The reads are given the clock (listUserCoupons' `now`): the cache is filled an hour before the
    // coupon expires and read again just after, however fast the machine runs.
    const expiresAt = inAnHour();
    const couponId = await insertCoupon(userId, expiresAt, new Date(Date.now() - 1_000));
    const all = await listUserCoupons({ userId, limit: 20 });
    expect(all.data.map((c) => [c.id, c.status])).toEqual([[couponId, 'AVAILABLE']]);
    expect((await listUserCoupons({ userId, status: 'AVAILABLE', limit: 20 })).data.map((c) => c.id)).toEqual([couponId]);
    expect(await cachedQueries(userId)).toEqual(['q:*:20:', 'q:AVAILABLE:20:']);

    const hidden = await insertCoupon(userId, new Date(expiresAt.getTime() + 3_600_000));
    const now = new Date(expiresAt.getTime() + 50);
    // The unfiltered page comes from the cache (no hidden row), its status from the clock.
    const later = await listUserCoupons({ userId, limit: 20, now });
    expect(later.data.map((c) => [c.id, c.status])).toEqual([[couponId, 'EXPIRED']]);
    // The AVAILABLE page ended with its coupon's expiry: read again from Postgres.
    expect((await listUserCoupons({ userId, status: 'AVAILABLE', limit: 20, now })).data.map((c) => c.id)).toEqual([hidden]);
    // EXPIRED pages are never cached: they grow as coupons expire.
    expect((await listUserCoupons({ userId, status: 'EXPIRED', limit: 20, now })).data.map((c) => c.id)).toEqual([couponId]);
    expect(await cachedQueries(userId)).toEqual(['q:*:20:', 'q:AVAILABLE:20:']);
  });

  it('falls back to Postgres when Redis is away, and fails an invalidation rather than skip it', async () => {
    const userId = uniqueId('down');
    const couponId = await insertCoupon(userId, inAnHour());
    // A connection that is gone: not ready for reads, and every command fails.
    const away = createRedis('client');
    await waitForReady(away);
    away.disconnect();
    try {
      initUserCouponCache(away);
      expect((await listUserCoupons({ userId, limit: 20 })).data.map((c) => c.id)).toEqual([couponId]);
      await expect(invalidateUserCoupons([userId])).rejects.toThrow();
    } finally {
      initUserCouponCache(redis);
    }
    expect(await cachedQueries(userId)).toEqual([]);
  });
});
