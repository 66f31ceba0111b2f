// Promises of the README and docs/ARCHITECTURE.md that no other test held the code to, each against
// the real processes (web, worker, bridge; Kafka, Postgres, Redis) or, where a fault must be staged
// exactly, in-process against the real Postgres and Redis. Each test fails if its promise breaks.
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { Kafka, logLevel } from 'kafkajs';
import { request } from 'undici';
import { codeHash } from '../src/domain/codes';
import { reserveRequestId, derivedJobId } from '../src/queues/names';
import {
  couponRow,
  createCheckoutPolicy,
  eventually,
  EventProducer,
  paymentEvent,
  processedEvents,
  reservationsOf,
  reserveAndSettle,
  shopperWith,
} from './support/checkout';
import { closeDb, db } from './support/db';
import { uniqueId } from './support/fixtures';
import { Api } from './support/http';
import { startStack, stopProcess, type Stack } from './support/stack';
import { adminToken, tokenFor } from './support/tokens';

let stack: Stack;
let api: Api;
let admin: string;
const events = new EventProducer();

beforeAll(async () => {
  stack = await startStack({ workers: 1, bridge: true, name: 'guarantees' });
  api = new Api(stack.baseUrl, 128);
  admin = await adminToken();
});

afterAll(async () => {
  await events.close();
  await api?.close();
  await stack?.stop();
  await closeDb();
});

const createPolicy = async (overrides: Record<string, unknown>) => {
  const reply = await api.post('/api/v1/coupons/policies', admin, {
    name: uniqueId('policy'),
    discount: { type: 'FIXED', value: 3000, minOrderAmount: 10000 },
    issueWindow: { startsAt: new Date(Date.now() - 60_000).toISOString() },
    validity: { days: 7 },
    perUserLimit: 1,
    ...overrides,
  });
  expect(reply.status).toBe(201);
  return reply.body as { id: string; createdAt: string };
};
const publish = (event: { orderId: string }) => events.publish(stack.paymentsTopic, event);
/** The worker's record of a payment event, once it has one. */
const recorded = async (eventId: string) =>
  (
    await eventually(
      () => processedEvents(eventId),
      (rows) => rows.length > 0,
      30_000,
      `event ${eventId} recorded`,
    )
  )[0];
const couponIs = (couponId: string, status: string) =>
  eventually(
    () => couponRow(couponId),
    (c) => c?.status === status,
    30_000,
    `coupon ${status}`,
  );

/** A shopper holding one coupon of `policyId`, reserved on a new order. */
async function reservedCoupon(policyId: string) {
  const shopper = await shopperWith(api, policyId);
  const couponId = shopper.coupons[0] as string;
  const orderId = uniqueId('order');
  const job = await reserveAndSettle(api, shopper, couponId, orderId);
  expect(job.status).toBe('succeeded');
  return { shopper, couponId, orderId, reservationId: job.result.reservationId as string };
}

/** A reserved coupon whose order PAYMENT_COMPLETED has made USED. */
async function usedCoupon(policyId: string) {
  const reserved = await reservedCoupon(policyId);
  await publish(paymentEvent('PAYMENT_COMPLETED', reserved.orderId, { reservationId: reserved.reservationId }));
  await couponIs(reserved.couponId, 'USED');
  return reserved;
}

describe('EVENT policies and the time of the event', () => {
  it('issues only from the policies that existed when the event occurred', async () => {
    const trigger = `JOINED_${uniqueId('x').slice(2, 10).toUpperCase()}`;
    const older = await createPolicy({ issueMethod: 'EVENT', triggerEvent: trigger, totalQuantity: null });
    // Apart by a few milliseconds at least, so an instant lies strictly between the two creations.
    await eventually(
      async () => Date.now(),
      (now) => now > Date.parse(older.createdAt) + 5,
      1_000,
      'time passes',
    );
    const newer = await createPolicy({ issueMethod: 'EVENT', triggerEvent: trigger, totalQuantity: null });
    const between = new Date((Date.parse(older.createdAt) + Date.parse(newer.createdAt)) / 2);
    expect(between.getTime()).toBeGreaterThan(Date.parse(older.createdAt));
    expect(between.getTime()).toBeLessThan(Date.parse(newer.createdAt));

    const before = { eventId: uniqueId('before'), type: trigger, userId: uniqueId('u'), occurredAt: between.toISOString() };
    const after = { eventId: uniqueId('after'), type: trigger, userId: uniqueId('u'), occurredAt: new Date().toISOString() };
    await events.send(
      stack.userEventsTopic,
      [before, after].map((e) => ({ key: e.userId, value: JSON.stringify(e) })),
    );

    const issuedBy = async (event: { eventId: string }) => {
      const jobId = derivedJobId('user-event', event.eventId);
      await eventually(
        () => api.get(`/api/v1/jobs/${jobId}`, admin),
        (r) => r.status === 200,
        30_000,
        `job of ${event.eventId}`,
      );
      const job = await api.settle(jobId, admin);
      expect(job.status).toBe('succeeded');
      return (job.result.policies as { policyId: string; outcome: string }[]).filter(
        (p) => p.policyId === older.id || p.policyId === newer.id,
      );
    };
    expect(await issuedBy(before)).toEqual([{ policyId: older.id, outcome: 'issued', couponId: expect.any(String) }]);
    expect((await issuedBy(after)).map((p) => [p.policyId, p.outcome]).sort()).toEqual(
      [
        [older.id, 'issued'],
        [newer.id, 'issued'],
      ].sort(),
    );
    const { rows } = await db().query<{ policy_id: string; user_id: string }>(
      'SELECT policy_id, user_id FROM coupons WHERE policy_id = ANY($1)',
      [[older.id, newer.id]],
    );
    const held = rows.map((r) => `${r.policy_id === older.id ? 'older' : 'newer'}:${r.user_id}`).sort();
    expect(held).toEqual([`older:${before.userId}`, `older:${after.userId}`, `newer:${after.userId}`].sort());
  });
});

describe('refunds through Kafka', () => {
  it('leaves the coupon USED when the policy does not restore on refund', async () => {
    const policyId = await createCheckoutPolicy(api, { restoreOnRefund: false });
    const { couponId, orderId, reservationId } = await usedCoupon(policyId);
    const refund = paymentEvent('PAYMENT_REFUNDED', orderId, { reservationId });
    await publish(refund);
    expect(await recorded(refund.eventId)).toMatchObject({ outcome: 'IGNORED', reason_code: 'COUPON_NOT_AVAILABLE' });
    expect(await couponRow(couponId)).toMatchObject({ status: 'USED', order_id: orderId, reservation_id: reservationId });
    expect((await reservationsOf(couponId)).map((r) => r.status)).toEqual(['CONFIRMED']);
  });

  it('leaves an expired coupon USED (restoring it would hand out a coupon past its validity)', async () => {
    // Valid for 20 s: long enough to reserve and pay on a busy machine, short enough to wait out.
    const validUntil = new Date(Date.now() + 20_000);
    const policyId = await createCheckoutPolicy(api, { validity: { until: validUntil.toISOString() } });
    const { couponId, orderId, reservationId } = await usedCoupon(policyId);
    await eventually(
      async () => Date.now(),
      (now) => now > validUntil.getTime() + 500,
      30_000,
      'the coupon expires',
    );
    const refund = paymentEvent('PAYMENT_REFUNDED', orderId, { reservationId });
    await publish(refund);
    expect(await recorded(refund.eventId)).toMatchObject({ outcome: 'IGNORED', reason_code: 'COUPON_EXPIRED' });
    expect(await couponRow(couponId)).toMatchObject({ status: 'USED', order_id: orderId, reservation_id: reservationId });
  });
});

describe('PAYMENT_COMPLETED and PAYMENT_FAILED for one order', () => {
  it('ends CONFIRMED and USED whichever comes first: FAILED after COMPLETED changes nothing', async () => {
    const policyId = await createCheckoutPolicy(api);
    const first = await usedCoupon(policyId);
    const failed = paymentEvent('PAYMENT_FAILED', first.orderId, { reservationId: first.reservationId });
    await publish(failed);
    expect(await recorded(failed.eventId)).toMatchObject({ outcome: 'IGNORED', reason_code: 'RESERVATION_NOT_PENDING' });
    expect(await couponRow(first.couponId)).toMatchObject({ status: 'USED', reservation_id: first.reservationId });
    expect((await reservationsOf(first.couponId)).map((r) => r.status)).toEqual(['CONFIRMED']);

    // The other order: FAILED releases, then COMPLETED lands late and confirms all the same.
    const second = await reservedCoupon(policyId);
    const early = paymentEvent('PAYMENT_FAILED', second.orderId, { reservationId: second.reservationId });
    await publish(early);
    expect(await recorded(early.eventId)).toMatchObject({ outcome: 'APPLIED' });
    const late = paymentEvent('PAYMENT_COMPLETED', second.orderId, { reservationId: second.reservationId });
    await publish(late);
    expect(await recorded(late.eventId)).toMatchObject({ outcome: 'APPLIED' });
    expect(await couponRow(second.couponId)).toMatchObject({ status: 'USED', reservation_id: second.reservationId });
    expect((await reservationsOf(second.couponId)).map((r) => r.status)).toEqual(['CONFIRMED']);
    // A third order gets both in one send, back to back: workers may apply them in either order.
    const third = await reservedCoupon(policyId);
    const both = ['PAYMENT_COMPLETED', 'PAYMENT_FAILED'].map((type) =>
      paymentEvent(type, third.orderId, { reservationId: third.reservationId }),
    );
    await events.send(
      stack.paymentsTopic,
      both.map((e) => ({ key: third.orderId, value: JSON.stringify(e) })),
    );
    for (const e of both) await recorded(e.eventId);
    expect(await couponRow(third.couponId)).toMatchObject({ status: 'USED', reservation_id: third.reservationId });
    expect((await reservationsOf(third.couponId)).map((r) => r.status)).toEqual(['CONFIRMED']);
  });
});

describe('payment jobs', () => {
  it('are read by admins only, even by the user the event names', async () => {
    const policyId = await createCheckoutPolicy(api);
    const { shopper, couponId, orderId, reservationId } = await reservedCoupon(policyId);
    const event = paymentEvent('PAYMENT_COMPLETED', orderId, { reservationId, userId: shopper.id });
    await publish(event);
    await couponIs(couponId, 'USED');
    const jobId = derivedJobId('payment', event.eventId);
    const asAdmin = await eventually(
      () => api.get(`/api/v1/jobs/${jobId}`, admin),
      (r) => r.status === 200,
      30_000,
      'the payment job',
    );
    expect(asAdmin.body).toMatchObject({ id: jobId, type: 'payment' });
    for (const token of [shopper.token, await tokenFor(uniqueId('stranger'))]) {
      const reply = await api.get(`/api/v1/jobs/${jobId}`, token);
      expect([403, 404]).toContain(reply.status);
      expect(JSON.stringify(reply.body)).not.toContain(event.eventId);
    }
  });
});

describe('the first uses of one Idempotency-Key on POST /coupons/reserve, at the same instant', () => {
  const reserveAt = (token: string, key: string, body: Record<string, unknown>) =>
    api.call('POST', '/api/v1/coupons/reserve', { token, body, headers: { 'idempotency-key': key } });

  it('make one reservation: the same body answers the same job, another body 409', async () => {
    const keys = 8;
    const policyId = await createCheckoutPolicy(api, { perUserLimit: keys * 2 });
    const shopper = await shopperWith(api, policyId, keys * 2);
    for (let k = 0; k < keys; k += 1) {
      const key = randomUUID();
      const [sameCoupon, otherCoupon] = shopper.coupons.slice(k * 2, k * 2 + 2) as [string, string];
      const body = { couponId: sameCoupon, orderId: uniqueId('order'), orderAmount: 50_000 };
      // Three copies of the body and two other bodies under the one key, sent together.
      const bodies = [
        body,
        body,
        { ...body, orderAmount: 60_000 },
        body,
        { couponId: otherCoupon, orderId: uniqueId('order'), orderAmount: 50_000 },
      ];
      const replies = await Promise.all(bodies.map((b) => reserveAt(shopper.token, key, b)));
      const first = bodies.findIndex((_, i) => replies[i]!.status === 202);
      expect(first).toBeGreaterThanOrEqual(0);
      const winner = bodies[first];
      const jobId = replies[first]!.body.jobId as string;
      for (const [i, reply] of replies.entries()) {
        if (bodies[i] === winner) expect({ status: reply.status, jobId: reply.body.jobId }).toEqual({ status: 202, jobId });
        else expect({ status: reply.status, code: reply.body.error?.code }).toEqual({ status: 409, code: 'IDEMPOTENCY_KEY_REUSED' });
      }
      expect(await api.settle(jobId, shopper.token)).toMatchObject({ status: 'succeeded', result: { couponId: winner!.couponId } });
      const { rows } = await db().query<{ coupon_id: string }>(
        'SELECT coupon_id FROM reservations WHERE request_id = $1 OR coupon_id = ANY($2)',
        [reserveRequestId(shopper.id, key), [sameCoupon, otherCoupon]],
      );
      expect(rows.map((r) => r.coupon_id)).toEqual([winner!.couponId]);
    }
  });
});

describe('the per-user limit (I2) of an unlimited DOWNLOAD policy under concurrency', () => {
  it('never issues a user more than perUserLimit when each asks many times at once, through two webs', async () => {
    const perUserLimit = 3;
    const { id: policyId } = await createPolicy({ issueMethod: 'DOWNLOAD', totalQuantity: null, perUserLimit });
    const second = await stack.startWeb();
    const secondApi = new Api(second.baseUrl, 128);
    try {
      const users = await Promise.all(
        Array.from({ length: 40 }, (_, i) => uniqueId(`u${i}`)).map(async (id) => ({ id, token: await tokenFor(id) })),
      );
      const asks = users.flatMap((u) => Array.from({ length: 8 }, (_, k) => ({ user: u, via: k % 2 === 0 ? api : secondApi })));
      const outcomes = await Promise.all(
        asks.map(async ({ user, via }) => {
          const reply = await via.call('POST', '/api/v1/coupons/issue', {
            token: user.token,
            body: { policyId },
            headers: { prefer: 'wait=10' },
          });
          const job = reply.status === 200 ? reply.body : await via.settle(reply.body.jobId, user.token);
          return { user: user.id, status: job.status as string, code: job.reason?.code as string | undefined };
        }),
      );
      const { rows } = await db().query<{ user_id: string; n: number }>(
        'SELECT user_id, count(*)::int AS n FROM coupons WHERE policy_id = $1 GROUP BY user_id',
        [policyId],
      );
      // Each user asked more often than the limit allows: every one holds exactly the limit, no more.
      expect(rows).toHaveLength(users.length);
      expect(rows.every((r) => r.n === perUserLimit)).toBe(true);
      const told = new Map<string, number>();
      for (const o of outcomes) if (o.status === 'succeeded') told.set(o.user, (told.get(o.user) ?? 0) + 1);
      expect([...told.values()]).toEqual(Array(users.length).fill(perUserLimit));
      expect(outcomes.filter((o) => o.status !== 'succeeded').every((o) => o.code === 'USER_LIMIT_REACHED')).toBe(true);
    } finally {
      await secondApi.close();
    }
  });
});

describe('a chunked request body (no Content-Length)', () => {
  const postChunked = async (token: string, bytes: Buffer) => {
    // A stream body is sent with Transfer-Encoding: chunked, in pieces of 4 KiB.
    const pieces = Array.from({ length: Math.ceil(bytes.length / 4096) }, (_, i) => bytes.subarray(i * 4096, (i + 1) * 4096));
    const res = await request(`${stack.baseUrl}/api/v1/coupons/issue`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: Readable.from(pieces),
    });
    const text = await res.body.text();
    return { status: res.statusCode, body: text ? JSON.parse(text) : undefined };
  };
  /** A valid issue request padded with whitespace to exactly `size` bytes. */
  const padded = (policyId: string, size: number) => {
    const json = JSON.stringify({ policyId });
    return Buffer.from(json + ' '.repeat(size - Buffer.byteLength(json)));
  };

  it('is refused 413 PAYLOAD_TOO_LARGE one byte over 64 KiB, and taken at exactly 64 KiB', async () => {
    const { id: policyId } = await createPolicy({ issueMethod: 'DOWNLOAD', totalQuantity: null, perUserLimit: 5 });
    const user = uniqueId('big');
    const token = await tokenFor(user);
    const over = await postChunked(token, padded(policyId, 64 * 1024 + 1));
    expect(over.status).toBe(413);
    expect(over.body).toEqual({ error: { code: 'PAYLOAD_TOO_LARGE', message: expect.any(String) } });
    const at = await postChunked(token, padded(policyId, 64 * 1024));
    expect(at.status).toBe(202);
    expect(await api.settle(at.body.jobId, token)).toMatchObject({ status: 'succeeded' });
    // The refused request made nothing: the user holds the one coupon of the request taken.
    const { rows } = await db().query('SELECT id FROM coupons WHERE policy_id = $1 AND user_id = $2', [policyId, user]);
    expect(rows).toHaveLength(1);
  });
});

describe('a malformed payment event', () => {
  it('reaches the dead-letter topic unchanged, with its source offset and when it was dead-lettered', async () => {
    const kafka = new Kafka({
      clientId: 'guarantees',
      brokers: (process.env.KAFKA_BROKERS ?? '127.0.0.1:9092').split(','),
      logLevel: logLevel.NOTHING,
    });
    const producer = kafka.producer();
    const { couponId, orderId, reservationId } = await reservedCoupon(await createCheckoutPolicy(api));
    const keys = [uniqueId('poison'), uniqueId('poison')];
    const values = [
      '{"type": "PAYMENT_COMPLETED", cut off',
      JSON.stringify({ eventId: uniqueId('e'), type: 'PAID', orderId: 'o-1', occurredAt: new Date().toISOString() }),
    ];
    const sentAt = Date.now();
    await producer.connect();
    let baseOffset: string;
    try {
      // Both on partition 1, in order, then a valid event behind them on the same partition.
      const [sent] = await producer.send({
        topic: stack.paymentsTopic,
        acks: -1,
        messages: [
          ...keys.map((key, i) => ({ key, value: values[i]!, partition: 1, headers: { 'x-origin': `test-${i}` } })),
          { key: orderId, value: JSON.stringify(paymentEvent('PAYMENT_COMPLETED', orderId, { reservationId })), partition: 1 },
        ],
      });
      baseOffset = sent!.baseOffset as string;
    } finally {
      await producer.disconnect();
    }
    await couponIs(couponId, 'USED');

    const dead = (await events.readAll(`${stack.paymentsTopic}.dlq`, 2)).filter((m) => keys.includes(m.key ?? ''));
    expect(dead.map((m) => m.key).sort()).toEqual([...keys].sort());
    for (const [i, key] of keys.entries()) {
      const letter = dead.find((m) => m.key === key)!;
      expect(letter.value).toBe(values[i]);
      expect(letter.headers).toMatchObject({
        'x-origin': `test-${i}`,
        'dlq-reason': i === 0 ? 'the value is not JSON' : expect.stringMatching(/^not a payment event: type/),
        'dlq-source-topic': stack.paymentsTopic,
        'dlq-source-partition': '1',
        'dlq-source-offset': String(BigInt(baseOffset) + BigInt(i)),
      });
      const at = Date.parse(letter.headers['dlq-at'] ?? '');
      expect(new Date(at).toISOString()).toBe(letter.headers['dlq-at']);
      expect(at).toBeGreaterThanOrEqual(sentAt - 1000);
      expect(at).toBeLessThanOrEqual(Date.now());
    }
  });
});

// Last: it kills the stack's worker.
describe('a code generation rerun', () => {
  it('deletes the codes of the unfinished earlier run and hands out a complete fresh set', async () => {
    const { id: policyId } = await createPolicy({ issueMethod: 'CODE', totalQuantity: null });
    const count = 100_000;
    const reply = await api.post(`/api/v1/coupons/policies/${policyId}/codes`, admin, { count });
    expect(reply.status).toBe(202);
    const jobId = reply.body.jobId as string;
    await eventually(
      () => api.get(`/api/v1/jobs/${jobId}`, admin),
      (r) => (r.body.progress?.done ?? 0) > 0,
      60_000,
      'the first codes stored',
    );
    await stopProcess(stack.workers[0]!, 'SIGKILL');
    const hashesOfBatch = async () =>
      (await db().query<{ code_hash: string }>('SELECT code_hash FROM coupon_codes WHERE batch_id = $1', [jobId])).rows.map(
        (r) => r.code_hash,
      );
    const earlier = await hashesOfBatch();
    // The kill landed mid-run: some codes stored, the batch not finished.
    expect(earlier.length).toBeGreaterThan(0);
    expect(earlier.length).toBeLessThan(count);
    expect((await db().query('SELECT 1 FROM code_batches WHERE batch_id = $1', [jobId])).rows).toHaveLength(0);

    await stack.startWorker();
    const job = await api.settle(jobId, admin, 120_000);
    expect(job).toMatchObject({ status: 'succeeded', result: { count } });
    const codes = job.result.codes as string[];
    expect(new Set(codes).size).toBe(count);
    const stored = new Set(await hashesOfBatch());
    expect(stored.size).toBe(count);
    expect(earlier.filter((h) => stored.has(h))).toEqual([]);
    expect(codes.filter((c) => !stored.has(codeHash(process.env.CODE_HMAC_SECRET as string, c)))).toEqual([]);
  });
});
