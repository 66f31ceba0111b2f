// Reserving coupons for orders, over HTTP against the real web and worker processes: validation,
// reservation under contention, idempotency keys, cancel and confirm.
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import IORedis from 'ioredis';
import { QUEUES } from '../src/queues/names';
import { closeDb, db } from './support/db';
import { uniqueId } from './support/fixtures';
import { Api } from './support/http';
import { couponRow, createCheckoutPolicy, eventually, reservationsOf, reserve, reserveAndSettle, shopperWith } from './support/checkout';
import { startStack, type Stack } from './support/stack';
import { adminToken, tokenFor } from './support/tokens';

let stack: Stack;
let api: Api;
let admin: string;
let policyId: string;

beforeAll(async () => {
  stack = await startStack({ workers: 1, name: 'checkout' });
  api = new Api(stack.baseUrl, 128);
  admin = await adminToken();
  policyId = await createCheckoutPolicy(api);
});

afterAll(async () => {
  await api?.close();
  await stack?.stop();
  await closeDb();
});

describe('POST /coupons/validate', () => {
  it('says whether the coupon is usable for an order and what it would take off, changing nothing', async () => {
    const percent = await createCheckoutPolicy(api, {
      discount: { type: 'PERCENTAGE', value: 15, maxDiscountAmount: 5000, minOrderAmount: 10_000 },
    });
    const shopper = await shopperWith(api, percent);
    const [couponId] = shopper.coupons as [string];
    const validate = (orderAmount: number, token = shopper.token) => api.post('/api/v1/coupons/validate', token, { couponId, orderAmount });

    expect((await validate(20_000)).body).toEqual({ usable: true, discountAmount: 3000 });
    expect((await validate(100_000)).body).toEqual({ usable: true, discountAmount: 5000 });
    const low = await validate(9_999);
    expect(low.status).toBe(200);
    expect(low.body).toMatchObject({ usable: false, discountAmount: 0, reason: { code: 'ORDER_AMOUNT_TOO_LOW' } });
    expect((await couponRow(couponId))?.status).toBe('ISSUED');

    expect((await validate(20_000, await tokenFor('someone-else'))).status).toBe(403);
    expect((await validate(20_000, admin)).body.usable).toBe(true);
    expect((await api.post('/api/v1/coupons/validate', shopper.token, { couponId: 'no-such-coupon', orderAmount: 1 })).status).toBe(404);
    for (const bad of [
      { couponId },
      { couponId, orderAmount: -1 },
      { couponId, orderAmount: 1.5 },
      { couponId, orderAmount: '100' },
      { couponId, orderAmount: 1, extra: 1 },
    ]) {
      const reply = await api.post('/api/v1/coupons/validate', shopper.token, bad);
      expect(reply.status).toBe(400);
      expect(reply.body.error.code).toBe('VALIDATION_FAILED');
    }
  });
});

describe('POST /coupons/reserve', () => {
  it('reserves an issued coupon for an order with its discount and a 10-minute expiry', async () => {
    const shopper = await shopperWith(api, policyId);
    const [couponId] = shopper.coupons as [string];
    const orderId = uniqueId('order');
    const before = Date.now();
    const job = await reserveAndSettle(api, shopper, couponId, orderId, 45_000);
    expect(job).toMatchObject({ type: 'reserve', status: 'succeeded', result: { couponId, orderId, discountAmount: 3000 } });
    const expiresIn = Date.parse(job.result.expiresAt) - before;
    expect(expiresIn).toBeGreaterThan(590_000);
    expect(expiresIn).toBeLessThan(620_000);

    const coupon = await couponRow(couponId);
    expect(coupon).toMatchObject({ status: 'RESERVED', order_id: orderId, reservation_id: job.result.reservationId });
    const list = await api.get(`/api/v1/coupons/users/${shopper.id}?status=RESERVED`, shopper.token);
    expect(list.body.data.map((c: { id: string }) => c.id)).toEqual([couponId]);
  });

  it('refuses what the rules refuse, as rejected jobs', async () => {
    const shopper = await shopperWith(api, policyId, 2);
    const [first, second] = shopper.coupons as [string, string];
    const other = await shopperWith(api, policyId);

    expect((await reserveAndSettle(api, shopper, second, uniqueId('o'), 9_000)).reason.code).toBe('ORDER_AMOUNT_TOO_LOW');
    expect((await reserveAndSettle(api, shopper, 'no-such-coupon')).reason.code).toBe('COUPON_NOT_FOUND');
    // Someone else's coupon is as good as missing.
    expect((await reserveAndSettle(api, other, first)).reason.code).toBe('COUPON_NOT_FOUND');
    expect((await reserveAndSettle(api, shopper, first)).status).toBe('succeeded');
    expect((await reserveAndSettle(api, shopper, first)).reason.code).toBe('COUPON_NOT_AVAILABLE');

    await db().query("UPDATE coupons SET expires_at = now() - interval '1 second' WHERE id = $1", [second]);
    expect((await reserveAndSettle(api, shopper, second)).reason.code).toBe('COUPON_EXPIRED');
  });

  it('gives exactly one of 50 concurrent reservations of one coupon for 50 orders', async () => {
    const shopper = await shopperWith(api, policyId);
    const [couponId] = shopper.coupons as [string];
    const race = uniqueId('race');
    const replies = await Promise.all(
      Array.from({ length: 50 }, (_, i) => reserve(api, shopper.token, { couponId, orderId: `${race}-${i}`, orderAmount: 20_000 })),
    );
    expect(replies.map((r) => r.status)).toEqual(Array(50).fill(202));
    expect(new Set(replies.map((r) => r.body.jobId)).size).toBe(50);
    const jobs = await Promise.all(replies.map((r) => api.settle(r.body.jobId, shopper.token)));

    const won = jobs.filter((j) => j.status === 'succeeded');
    expect(won).toHaveLength(1);
    expect(jobs.filter((j) => j.status === 'rejected').map((j) => j.reason.code)).toEqual(Array(49).fill('COUPON_NOT_AVAILABLE'));
    const rows = await reservationsOf(couponId);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ status: 'PENDING', id: won[0].result.reservationId, order_id: won[0].result.orderId });
    expect(await couponRow(couponId)).toMatchObject({ status: 'RESERVED', reservation_id: won[0].result.reservationId });
  });

  it('refuses ids that Postgres could not store (a lone surrogate) with a 400, not a failed job', async () => {
    const shopper = await shopperWith(api, policyId);
    const reply = await reserve(api, shopper.token, {
      couponId: shopper.coupons[0] as string,
      orderId: 'order-\ud800',
      orderAmount: 20_000,
    });
    expect(reply.status).toBe(400);
    expect(reply.body.error.details[0].path).toBe('orderId');
  });

  it('needs a valid Idempotency-Key', async () => {
    const shopper = await shopperWith(api, policyId);
    const body = { couponId: shopper.coupons[0], orderId: 'o', orderAmount: 20_000 };
    const missing = await api.post('/api/v1/coupons/reserve', shopper.token, body);
    expect(missing.status).toBe(400);
    expect(missing.body.error).toMatchObject({ code: 'VALIDATION_FAILED', details: [{ path: 'Idempotency-Key' }] });
    for (const key of ['', 'has space', 'x'.repeat(256), 'ünicode']) {
      expect(
        (await api.call('POST', '/api/v1/coupons/reserve', { token: shopper.token, body, headers: { 'idempotency-key': key } })).status,
      ).toBe(400);
    }
  });

  it('answers a repeated key and body with the first answer, refuses the key with another body, and keeps keys per user', async () => {
    const shopper = await shopperWith(api, policyId, 2);
    const [couponId, otherCoupon] = shopper.coupons as [string, string];
    const key = randomUUID();
    const body = { couponId, orderId: uniqueId('order'), orderAmount: 30_000 };

    const first = await reserve(api, shopper.token, body, key);
    expect(first.status).toBe(202);
    const firstJob = await api.settle(first.body.jobId, shopper.token);
    expect(firstJob.status).toBe('succeeded');

    // The same request again, after it finished, and many times at once: the same job, the same reservation.
    const again = await Promise.all(
      Array.from({ length: 10 }, () =>
        reserve(api, shopper.token, { orderAmount: body.orderAmount, orderId: body.orderId, couponId }, key),
      ),
    );
    for (const reply of again) expect(reply).toMatchObject({ status: 202, body: { jobId: first.body.jobId } });
    expect(await api.settle(first.body.jobId, shopper.token)).toEqual(firstJob);

    const changed = await reserve(api, shopper.token, { ...body, couponId: otherCoupon }, key);
    expect(changed.status).toBe(409);
    expect(changed.body.error.code).toBe('IDEMPOTENCY_KEY_REUSED');
    expect((await reserve(api, shopper.token, { ...body, orderAmount: 30_001 }, key)).status).toBe(409);

    // Another user's identical key is theirs alone (for an order of their own: the first is the shopper's).
    const stranger = await shopperWith(api, policyId);
    const theirs = await reserve(
      api,
      stranger.token,
      { couponId: stranger.coupons[0] as string, orderId: uniqueId('order'), orderAmount: 30_000 },
      key,
    );
    expect(theirs.status).toBe(202);
    expect(theirs.body.jobId).not.toBe(first.body.jobId);
    expect((await api.settle(theirs.body.jobId, stranger.token)).status).toBe('succeeded');

    expect(await reservationsOf(couponId)).toHaveLength(1);
    expect(await reservationsOf(otherCoupon)).toHaveLength(0);
  });
});

describe('Prefer: wait', () => {
  it('answers 200 with the finished job when asked to wait, 202 otherwise, and the same job either way', async () => {
    const shopper = await shopperWith(api, policyId, 2);
    const [couponId, other] = shopper.coupons as [string, string];
    const key = randomUUID();
    const body = { couponId, orderId: uniqueId('order'), orderAmount: 50_000 };
    const waited = await api.call('POST', '/api/v1/coupons/reserve', {
      token: shopper.token,
      body,
      headers: { 'idempotency-key': key, prefer: 'wait=5' },
    });
    expect(waited.status).toBe(200);
    expect(waited.headers['preference-applied']).toBe('wait=5');
    expect(waited.body).toMatchObject({ status: 'succeeded', type: 'reserve', result: { couponId, orderId: body.orderId } });
    expect(waited.headers['content-location']).toBe(waited.body.statusUrl);

    // The same key and body: the same job, now finished, whichever way it is asked for.
    const again = await api.call('POST', '/api/v1/coupons/reserve', {
      token: shopper.token,
      body,
      headers: { 'idempotency-key': key, prefer: 'respond-async, wait=5' },
    });
    expect(again.status).toBe(200);
    expect(again.body).toEqual(waited.body);
    const plain = await reserve(api, shopper.token, body, key);
    expect(plain.status).toBe(202);
    expect(plain.body.jobId).toBe(waited.body.jobId);

    // A refusal comes back the same way; a wait of 0 is no wait.
    const refused = await api.call('POST', '/api/v1/coupons/reserve', {
      token: shopper.token,
      body: { ...body, couponId: other, orderAmount: 1 },
      headers: { 'idempotency-key': randomUUID(), prefer: 'wait=5' },
    });
    expect(refused.status).toBe(200);
    expect(refused.body).toMatchObject({ status: 'rejected', reason: { code: 'ORDER_AMOUNT_TOO_LOW' } });
    const noWait = await api.call('POST', '/api/v1/coupons/reserve', {
      token: shopper.token,
      body: { ...body, couponId: other, orderAmount: 2 },
      headers: { 'idempotency-key': randomUUID(), prefer: 'wait=0' },
    });
    expect(noWait.status).toBe(202);

    const issued = await api.call('POST', '/api/v1/coupons/issue', {
      token: shopper.token,
      body: { policyId },
      headers: { prefer: 'wait=5' },
    });
    expect(issued.status).toBe(200);
    expect(issued.body).toMatchObject({ status: 'succeeded', type: 'issue', result: { policyId, userId: shopper.id } });
  });
});

describe('a waited checkout job is pushed, not followed', () => {
  it('answers a waited reserve and cancel from the job the worker pushed, with no web following the queue events', async () => {
    const subscriber = new IORedis(process.env.REDIS_URL as string);
    const queueConnection = subscriber.duplicate();
    const checkoutQueue = new Queue(QUEUES.checkout, { connection: queueConnection, prefix: stack.queuePrefix });
    const pushed = new Map<string, { name: string; returnvalue?: unknown }>();
    try {
      subscriber.on('message', (_channel: string, raw: string) => {
        for (const job of (JSON.parse(raw) as { jobs: { id: string; name: string; returnvalue?: unknown }[] }).jobs)
          pushed.set(job.id, job);
      });
      await subscriber.subscribe(`${stack.queuePrefix}:checkout-finished`);
      const shopper = await shopperWith(api, policyId);
      const [couponId] = shopper.coupons as [string];
      const waited = await api.call('POST', '/api/v1/coupons/reserve', {
        token: shopper.token,
        body: { couponId, orderId: uniqueId('order'), orderAmount: 50_000 },
        headers: { 'idempotency-key': randomUUID(), prefer: 'wait=5' },
      });
      expect(waited.status).toBe(200);
      const reservationId = waited.body.result.reservationId as string;
      const cancelled = await api.call('POST', `/api/v1/coupons/reservations/${reservationId}/cancel`, {
        token: shopper.token,
        headers: { prefer: 'wait=5' },
      });
      expect(cancelled.status).toBe(200);
      expect(cancelled.body).toMatchObject({ type: 'cancel', status: 'succeeded' });
      // The worker published each job once BullMQ stored it finished, with the result the client got.
      await eventually(
        async () => pushed.has(waited.body.jobId) && pushed.has(cancelled.body.jobId),
        (seen) => seen,
        10_000,
        'both pushes heard',
      );
      expect(pushed.get(waited.body.jobId)).toMatchObject({
        name: 'reserve',
        returnvalue: { outcome: 'succeeded', result: waited.body.result },
      });
      expect(pushed.get(cancelled.body.jobId)).toMatchObject({
        name: 'cancel',
        returnvalue: { outcome: 'succeeded', result: cancelled.body.result },
      });
      // A web following the checkout queue's event stream would be a QueueEvents client of that queue.
      expect(await checkoutQueue.getQueueEvents()).toEqual([]);
    } finally {
      // A connection handed to a Queue is the caller's to close.
      await checkoutQueue.close();
      queueConnection.disconnect();
      subscriber.disconnect();
    }
  });
});

describe('cancel and confirm', () => {
  it('lets the owner cancel a pending reservation, which gives the coupon back, once', async () => {
    const shopper = await shopperWith(api, policyId);
    const [couponId] = shopper.coupons as [string];
    const reserved = await reserveAndSettle(api, shopper, couponId);
    const reservationId = reserved.result.reservationId as string;

    const stranger = await tokenFor('stranger');
    expect((await api.post(`/api/v1/coupons/reservations/${reservationId}/cancel`, stranger)).status).toBe(403);
    expect((await api.post('/api/v1/coupons/reservations/nope/cancel', shopper.token)).status).toBe(404);
    expect((await api.post(`/api/v1/coupons/reservations/${reservationId}/confirm`, shopper.token)).status).toBe(403);

    const cancel = await api.post(`/api/v1/coupons/reservations/${reservationId}/cancel`, shopper.token);
    expect(cancel.status).toBe(202);
    const job = await api.settle(cancel.body.jobId, shopper.token);
    expect(job).toMatchObject({
      type: 'cancel',
      status: 'succeeded',
      result: { reservationId, status: 'CANCELLED', endReason: 'CANCELLED_BY_USER' },
    });
    expect(await couponRow(couponId)).toMatchObject({ status: 'ISSUED', reservation_id: null, order_id: null });

    // The coupon can be reserved again; cancelling the old reservation again changes nothing.
    expect((await reserveAndSettle(api, shopper, couponId)).status).toBe('succeeded');
    const again = await api.post(`/api/v1/coupons/reservations/${reservationId}/cancel`, shopper.token);
    expect(again.body.jobId).toBe(cancel.body.jobId);
    expect((await couponRow(couponId))?.status).toBe('RESERVED');
  });

  it('lets an admin confirm a pending reservation: the coupon is used, once', async () => {
    const shopper = await shopperWith(api, policyId);
    const [couponId] = shopper.coupons as [string];
    const orderId = uniqueId('paid-order');
    const reserved = await reserveAndSettle(api, shopper, couponId, orderId);
    const reservationId = reserved.result.reservationId as string;

    const confirm = await api.post(`/api/v1/coupons/reservations/${reservationId}/confirm`, admin);
    expect(confirm.status).toBe(202);
    expect(await api.settle(confirm.body.jobId, admin)).toMatchObject({
      type: 'confirm',
      status: 'succeeded',
      result: { status: 'CONFIRMED', endReason: 'CONFIRMED_BY_ADMIN' },
    });
    expect(await couponRow(couponId)).toMatchObject({ status: 'USED', order_id: orderId, reservation_id: reservationId });

    const cancel = await api.post(`/api/v1/coupons/reservations/${reservationId}/cancel`, shopper.token);
    expect(await api.settle(cancel.body.jobId, shopper.token)).toMatchObject({
      status: 'rejected',
      reason: { code: 'RESERVATION_NOT_PENDING' },
    });
    expect((await couponRow(couponId))?.status).toBe('USED');
    expect((await reserveAndSettle(api, shopper, couponId)).reason.code).toBe('COUPON_NOT_AVAILABLE');
  });
});
