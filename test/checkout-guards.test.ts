// What reserve refuses beyond the coupon's own rules, over HTTP against the real web and worker
// processes: an order holds one coupon and belongs to the user who first reserved on it (I10, with
// Postgres refusing the rest itself), and an Idempotency-Key stays bound to its first body when
// its Redis record is gone (I8 from Postgres alone).
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import IORedis from 'ioredis';
import { couponRow, createCheckoutPolicy, reservationsOf, reserve, reserveAndSettle, shopperWith, type Shopper } from './support/checkout';
import { closeDb, db } from './support/db';
import { uniqueId } from './support/fixtures';
import { Api } from './support/http';
import { startStack, type Stack } from './support/stack';
import { redisKeysUnder } from '../src/core/redis-keys';

let stack: Stack;
let api: Api;
let policyId: string;
let redis: IORedis;

beforeAll(async () => {
  stack = await startStack({ workers: 1, name: 'checkout-guards' });
  api = new Api(stack.baseUrl, 128);
  policyId = await createCheckoutPolicy(api);
  redis = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
});

afterAll(async () => {
  redis?.disconnect();
  await api?.close();
  await stack?.stop();
  await closeDb();
});

const liveOnOrder = async (orderId: string) =>
  (
    await db().query<{ user_id: string; coupon_id: string; status: string }>(
      "SELECT user_id, coupon_id, status FROM reservations WHERE order_id = $1 AND status IN ('PENDING', 'CONFIRMED')",
      [orderId],
    )
  ).rows;

describe('an order holds one coupon and belongs to its first user (I10)', () => {
  it('refuses a second coupon on an order, answers the same coupon again, and takes another once the first ended', async () => {
    const shopper = await shopperWith(api, policyId, 2);
    const [a, b] = shopper.coupons as [string, string];
    const orderId = uniqueId('order');
    const first = await reserveAndSettle(api, shopper, a, orderId);
    expect(first.status).toBe('succeeded');

    const second = await reserveAndSettle(api, shopper, b, orderId);
    expect(second).toMatchObject({ status: 'rejected', reason: { code: 'ORDER_ALREADY_HAS_COUPON' } });
    expect((await couponRow(b))?.status).toBe('ISSUED');
    expect(await reservationsOf(b)).toHaveLength(0);

    // The same coupon for the same order and amount under another key: the reservation it has.
    expect(await reserveAndSettle(api, shopper, a, orderId)).toMatchObject({
      status: 'succeeded',
      result: { reservationId: first.result.reservationId },
    });

    const cancel = await api.post(`/api/v1/coupons/reservations/${first.result.reservationId}/cancel`, shopper.token);
    expect((await api.settle(cancel.body.jobId, shopper.token)).status).toBe('succeeded');
    expect((await reserveAndSettle(api, shopper, b, orderId)).status).toBe('succeeded');
    expect(await liveOnOrder(orderId)).toEqual([{ user_id: shopper.id, coupon_id: b, status: 'PENDING' }]);
  });

  it("refuses a reservation under another user's order, also once the owner's reservation ended", async () => {
    const owner = await shopperWith(api, policyId);
    const stranger = await shopperWith(api, policyId);
    const orderId = uniqueId('order');
    const owned = await reserveAndSettle(api, owner, owner.coupons[0] as string, orderId);
    expect(owned.status).toBe('succeeded');

    expect(await reserveAndSettle(api, stranger, stranger.coupons[0] as string, orderId)).toMatchObject({
      status: 'rejected',
      reason: { code: 'ORDER_NOT_OWNED' },
    });
    const cancel = await api.post(`/api/v1/coupons/reservations/${owned.result.reservationId}/cancel`, owner.token);
    expect((await api.settle(cancel.body.jobId, owner.token)).status).toBe('succeeded');
    expect(await reserveAndSettle(api, stranger, stranger.coupons[0] as string, orderId)).toMatchObject({
      status: 'rejected',
      reason: { code: 'ORDER_NOT_OWNED' },
    });
    expect((await couponRow(stranger.coupons[0] as string))?.status).toBe('ISSUED');
    const { rows } = await db().query('SELECT user_id FROM orders WHERE order_id = $1', [orderId]);
    expect(rows).toEqual([{ user_id: owner.id }]);
  });

  it('gives one of many concurrent reservations of different coupons, by several users, on one order', async () => {
    const shoppers = await Promise.all([shopperWith(api, policyId, 6), shopperWith(api, policyId, 6), shopperWith(api, policyId, 6)]);
    const orderId = uniqueId('crowded-order');
    const asks = shoppers.flatMap((s) => s.coupons.map((couponId) => ({ shopper: s, couponId })));
    const replies = await Promise.all(
      asks.map(({ shopper, couponId }) => reserve(api, shopper.token, { couponId, orderId, orderAmount: 20_000 })),
    );
    expect(replies.map((r) => r.status)).toEqual(Array(asks.length).fill(202));
    const jobs = await Promise.all(replies.map((r, i) => api.settle(r.body.jobId, (asks[i] as { shopper: Shopper }).shopper.token)));

    const won = jobs.filter((j) => j.status === 'succeeded');
    expect(won).toHaveLength(1);
    const winner = asks[jobs.indexOf(won[0])] as { shopper: Shopper; couponId: string };
    for (const [i, job] of jobs.entries()) {
      if (job === won[0]) continue;
      // The winner's other coupons find the order full; the other users find it someone else's (or full, while the winner's row was not yet committed).
      const expected = asks[i]?.shopper === winner.shopper ? ['ORDER_ALREADY_HAS_COUPON'] : ['ORDER_NOT_OWNED', 'ORDER_ALREADY_HAS_COUPON'];
      expect(expected).toContain(job.reason?.code);
    }
    expect(await liveOnOrder(orderId)).toEqual([{ user_id: winner.shopper.id, coupon_id: winner.couponId, status: 'PENDING' }]);
    const { rows } = await db().query("SELECT count(*)::int AS n FROM coupons WHERE status = 'RESERVED' AND order_id = $1", [orderId]);
    expect(rows[0].n).toBe(1);
  });

  it('is refused by Postgres itself: a second PENDING or CONFIRMED reservation on an order, or one by another user', async () => {
    const shopper = await shopperWith(api, policyId, 3);
    const stranger = await shopperWith(api, policyId);
    const [a, b, c] = shopper.coupons as [string, string, string];
    const orderId = uniqueId('order');
    const insert = (couponId: string, userId: string, status = 'PENDING') =>
      db().query(
        `INSERT INTO reservations (id, coupon_id, user_id, order_id, order_amount, discount_amount, request_id, status, expires_at, ended_at)
         VALUES ($1, $2, $3, $4, 50000, 3000, $5, $6, now() + interval '10 minutes', CASE WHEN $6 = 'PENDING' THEN NULL ELSE now() END)`,
        [randomUUID(), couponId, userId, orderId, randomUUID(), status],
      );
    // No owner yet: the foreign key wants the order row first.
    await expect(insert(a, shopper.id)).rejects.toMatchObject({ constraint: 'fk_reservations_order_owner' });
    await db().query('INSERT INTO orders (order_id, user_id) VALUES ($1, $2)', [orderId, shopper.id]);
    await insert(a, shopper.id);
    await expect(insert(b, shopper.id)).rejects.toMatchObject({ constraint: 'uq_reservations_live_order' });
    await expect(insert(b, shopper.id, 'CONFIRMED')).rejects.toMatchObject({ constraint: 'uq_reservations_live_order' });
    await expect(insert(stranger.coupons[0] as string, stranger.id, 'CANCELLED')).rejects.toMatchObject({
      constraint: 'fk_reservations_order_owner',
    });
    // Ended reservations do not hold the order.
    await insert(c, shopper.id, 'EXPIRED');
    expect(await liveOnOrder(orderId)).toEqual([{ user_id: shopper.id, coupon_id: a, status: 'PENDING' }]);
  });
});

describe('an Idempotency-Key whose Redis record is gone (I8 from Postgres)', () => {
  /** Forgets every idempotency record of this stack, as a Redis that lost its data would. */
  async function forgetKeys(): Promise<void> {
    const keys = await redis.keys(redisKeysUnder(stack.queuePrefix).idempotency('*'));
    if (keys.length > 0) await redis.del(...keys);
  }

  async function scenario() {
    const shopper = await shopperWith(api, policyId, 2);
    const [a, b] = shopper.coupons as [string, string];
    const key = randomUUID();
    const bodyA = { couponId: a, orderId: uniqueId('order-a'), orderAmount: 40_000 };
    const bodyB = { couponId: b, orderId: uniqueId('order-b'), orderAmount: 40_000 };
    const first = await reserve(api, shopper.token, bodyA, key);
    const firstJob = await api.settle(first.body.jobId, shopper.token);
    expect(firstJob.status).toBe('succeeded');
    return { shopper, key, bodyA, bodyB, first, firstJob, b };
  }

  /** Another body under the key: 409 at once, decided from the reservation in Postgres; never the first reservation. */
  async function expectRefused(
    shopper: Shopper,
    key: ReturnType<typeof randomUUID>,
    body: { couponId: string; orderId: string; orderAmount: number },
  ) {
    const reply = await reserve(api, shopper.token, body, key);
    expect(reply.status).toBe(409);
    expect(reply.body.error.code).toBe('IDEMPOTENCY_KEY_REUSED');
  }

  it('refuses another body while the first job is still in BullMQ, and the first body gets the first answer', async () => {
    const { shopper, key, bodyA, bodyB, first, firstJob, b } = await scenario();
    await forgetKeys();
    await expectRefused(shopper, key, bodyB);
    expect((await couponRow(b))?.status).toBe('ISSUED');
    expect(await reservationsOf(b)).toHaveLength(0);

    // The record is bound to the first body again: its replay is the first answer, another body a 409 at once.
    const again = await reserve(api, shopper.token, bodyA, key);
    expect(again).toMatchObject({ status: 202, body: { jobId: first.body.jobId } });
    expect(await api.settle(again.body.jobId, shopper.token)).toEqual(firstJob);
    expect((await reserve(api, shopper.token, bodyB, key)).status).toBe(409);
  });

  it('refuses another body when the first job is gone too, from the reservation in Postgres', async () => {
    const { shopper, key, bodyA, bodyB, first, firstJob, b } = await scenario();
    const connection = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
    const queue = new Queue('checkout', { connection, prefix: stack.queuePrefix });
    try {
      await (await queue.getJob(first.body.jobId))?.remove();
      await forgetKeys();
      await expectRefused(shopper, key, bodyB);
      expect((await couponRow(b))?.status).toBe('ISSUED');
      expect(await reservationsOf(b)).toHaveLength(0);

      // The first body again: a new job, answering the first reservation.
      const again = await reserve(api, shopper.token, bodyA, key);
      expect(again.status).toBe(202);
      expect(await api.settle(again.body.jobId, shopper.token)).toMatchObject({ status: 'succeeded', result: firstJob.result });
      expect(await reservationsOf(bodyA.couponId)).toHaveLength(1);
    } finally {
      await queue.close();
      connection.disconnect();
    }
  });
});

describe('what Redis keeps of a reserve (bounded by age and size)', () => {
  it("answers a reservation from Postgres once its job is gone, to its owner only; the key's record lives an hour", async () => {
    const shopper = await shopperWith(api, policyId, 1);
    const body = { couponId: shopper.coupons[0] as string, orderId: uniqueId('order'), orderAmount: 40_000 };
    const key = randomUUID();
    const first = await reserve(api, shopper.token, body, key);
    const answered = await api.settle(first.body.jobId, shopper.token);
    expect(answered.status).toBe('succeeded');

    const records = await redis.keys(redisKeysUnder(stack.queuePrefix).idempotency('*'));
    const ttls = await Promise.all(records.map((k) => redis.ttl(k)));
    expect(ttls.length).toBeGreaterThan(0);
    for (const ttl of ttls) expect(ttl).toBeGreaterThan(0);
    for (const ttl of ttls) expect(ttl).toBeLessThanOrEqual(3600);

    // The job leaves Redis (an hour later, or sooner past 100,000 jobs); its statusUrl still answers.
    const connection = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
    const queue = new Queue('checkout', { connection, prefix: stack.queuePrefix });
    try {
      await (await queue.getJob(first.body.jobId))?.remove();
      expect(await queue.getJob(first.body.jobId)).toBeUndefined();
    } finally {
      await queue.close();
      connection.disconnect();
    }
    const later = await api.get(`/api/v1/jobs/${first.body.jobId}`, shopper.token);
    expect(later.status).toBe(200);
    expect(later.body).toMatchObject({ id: first.body.jobId, type: 'reserve', status: 'succeeded', result: answered.result });

    // Nobody else reads it, and a job id naming the request with another body's fingerprint finds nothing.
    const stranger = await shopperWith(api, policyId, 0);
    expect([403, 404]).toContain((await api.get(`/api/v1/jobs/${first.body.jobId}`, stranger.token)).status);
    const forged = `${(first.body.jobId as string).slice(0, -32)}${'0'.repeat(32)}`;
    expect((await api.get(`/api/v1/jobs/${forged}`, shopper.token)).status).toBe(404);
  });
});
