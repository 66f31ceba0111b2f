// I11: an event the bridge accepted from Kafka is never lost. The bridge writes it to the Postgres
// inbox before the offset moves; when Redis then loses its job (emptied here by deleting every key of
// the stack, as a restart without data or a failover to a lagging replica would), a worker's inbox
// sweep adds the job again. Real Kafka, Redis and Postgres, the real bridge and worker processes.
import { randomUUID } from 'node:crypto';
import IORedis from 'ioredis';
import { Kafka, logLevel } from 'kafkajs';
import { Queue } from 'bullmq';
import { derivedJobId, QUEUES } from '../src/queues/names';
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
import { logLines, logLinesWhen, startStack, stopProcess, type Stack } from './support/stack';
import { slowPostgres } from './support/tcp-proxy';
import { adminToken } from './support/tokens';

jest.setTimeout(240_000);

const STACK = 'inbox';
// Sweeps often and redrives soon, so the test waits seconds, not the production defaults.
const FAST_SWEEP = { INBOX_SWEEP_INTERVAL_MS: '300', INBOX_REDRIVE_AGE_MS: '2000' };
const ORDERS = 100;

let stack: Stack;
let api: Api;
let admin: string;
let policyId: string;
let redis: IORedis;
/** The stack's payments queue, for its job keys. */
let payments: Queue;
/** Messages published so far, per topic. */
const published = new Map<string, number>();
const events = new EventProducer();
const kafkaAdmin = new Kafka({
  clientId: 'inbox-test',
  brokers: (process.env.KAFKA_BROKERS ?? '127.0.0.1:9092').split(','),
  logLevel: logLevel.NOTHING,
}).admin();

beforeAll(async () => {
  stack = await startStack({ workers: 1, bridge: true, name: STACK, env: FAST_SWEEP });
  api = new Api(stack.baseUrl, 64);
  admin = await adminToken();
  policyId = await createCheckoutPolicy(api, { perUserLimit: 100 });
  redis = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
  payments = new Queue(QUEUES.payments, { connection: redis, prefix: stack.queuePrefix });
  await kafkaAdmin.connect();
});

afterAll(async () => {
  await events.close();
  await kafkaAdmin.disconnect();
  await payments?.close();
  redis?.disconnect();
  await api?.close();
  await stack?.stop();
  await closeDb();
});

/** Publishes payment events (keyed by order, as the payment system does) and counts the messages. */
async function publish(...payments: { orderId: string }[]): Promise<void> {
  await send(
    stack.paymentsTopic,
    payments.map((p) => ({ key: p.orderId, value: JSON.stringify(p) })),
  );
}

async function send(topic: string, messages: { key: string; value: string }[]): Promise<void> {
  await events.send(topic, messages);
  published.set(topic, (published.get(topic) ?? 0) + messages.length);
}

/** Resolves once the bridge has committed every message published so far: Kafka may forget them. */
async function allCommitted(topicName = stack.paymentsTopic): Promise<void> {
  const committed = async () => {
    const [topic] = await kafkaAdmin.fetchOffsets({ groupId: `bridge-${stack.queuePrefix}`, topics: [topicName] });
    return (topic?.partitions ?? []).reduce((sum, p) => sum + Math.max(0, Number(p.offset)), 0);
  };
  const expected = published.get(topicName) ?? 0;
  await eventually(committed, (n) => n === expected, 60_000, `${expected} offsets of ${topicName} committed`);
}

async function inboxRows(eventIds: string[], source = 'payments') {
  const { rows } = await db().query<{ event_id: string; job_id: string }>(
    'SELECT event_id, job_id FROM event_inbox WHERE source = $1 AND event_id = ANY($2)',
    [source, eventIds],
  );
  return rows;
}

/** Every key of the stack gone from Redis, jobs, queues and admission state alike. */
async function emptyRedis(): Promise<number> {
  let deleted = 0;
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${stack.queuePrefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) deleted += await redis.del(...keys);
  } while (cursor !== '0');
  return deleted;
}

const jobKey = (eventId: string) => payments.toKey(derivedJobId('payment', eventId));
const jobsInRedis = async (eventIds: string[]) =>
  (await Promise.all(eventIds.map((id) => redis.exists(jobKey(id))))).filter((n) => n === 1).length;

async function stopWorkers(): Promise<void> {
  await Promise.all(stack.workers.map((w) => stopProcess(w)));
}

/** Lines of every worker of the stack so far. */
function workerLines(match: (line: Record<string, unknown>) => boolean) {
  return stack.workers.flatMap((_, i) => logLines(`${STACK}-worker-${i + 1}`).filter(match));
}

/** `count` reservations, each of one coupon for an order of its own. */
async function reservations(count: number) {
  const owners = await Promise.all(Array.from({ length: Math.ceil(count / 10) }, () => shopperWith(api, policyId, 10)));
  const picks = owners.flatMap((shopper) => shopper.coupons.map((couponId) => ({ shopper, couponId }))).slice(0, count);
  return Promise.all(
    picks.map(async ({ shopper, couponId }) => {
      const orderId = uniqueId('order');
      const job = await reserveAndSettle(api, shopper, couponId, orderId);
      expect(job.status).toBe('succeeded');
      return { couponId, orderId, reservationId: job.result.reservationId as string };
    }),
  );
}

async function couponStatuses(couponIds: string[]) {
  const { rows } = await db().query<{ status: string; n: string }>(
    'SELECT status, count(*) AS n FROM coupons WHERE id = ANY($1) GROUP BY status',
    [couponIds],
  );
  return Object.fromEntries(rows.map((r) => [r.status, Number(r.n)]));
}

it('applies every accepted payment once after Redis lost all their jobs', async () => {
  const orders = await reservations(ORDERS);
  const couponIds = orders.map((o) => o.couponId);
  await stopWorkers();

  const payments = orders.map((o) => paymentEvent('PAYMENT_COMPLETED', o.orderId));
  const eventIds: string[] = payments.map((p) => p.eventId);
  await publish(...payments);
  await allCommitted();
  // Accepted: offsets committed, every event in the inbox and its job in Redis, no coupon used yet.
  expect(await inboxRows(eventIds)).toHaveLength(ORDERS);
  expect(await jobsInRedis(eventIds)).toBe(ORDERS);
  expect(await couponStatuses(couponIds)).toEqual({ RESERVED: ORDERS });

  expect(await emptyRedis()).toBeGreaterThan(0);
  expect(await jobsInRedis(eventIds)).toBe(0);

  const worker = await stack.startWorker();
  await eventually(
    () => couponStatuses(couponIds),
    (s) => s.USED === ORDERS,
    90_000,
    `${ORDERS} coupons USED`,
  );

  const { rows: processed } = await db().query<{ event_id: string; outcome: string }>(
    "SELECT event_id, outcome FROM processed_events WHERE source = 'payments' AND event_id = ANY($1)",
    [eventIds],
  );
  expect(processed).toHaveLength(ORDERS);
  expect(new Set(processed.map((p) => p.outcome))).toEqual(new Set(['APPLIED']));
  const { rows: confirmed } = await db().query<{ n: string }>(
    "SELECT count(*) AS n FROM reservations WHERE coupon_id = ANY($1) AND status = 'CONFIRMED'",
    [couponIds],
  );
  expect(Number(confirmed[0]?.n)).toBe(ORDERS);
  // None applied twice: one "applied" line per event, and every job added back came from the sweep.
  const applied = await logLinesWhen(
    `${STACK}-worker-${stack.workers.indexOf(worker) + 1}`,
    (l) => l.msg === 'PAYMENT_COMPLETED applied' && eventIds.includes(l.eventId as string),
    ORDERS,
  );
  expect(applied).toHaveLength(ORDERS);
  expect(new Set(applied.map((l) => l.eventId)).size).toBe(ORDERS);
  const redriven = workerLines((l) => l.msg === 'inbox: events whose jobs were missing from Redis added again');
  expect(redriven.reduce((sum, l) => sum + Number(l.redriven), 0)).toBe(ORDERS);

  // Retention: the applied rows go.
  await eventually(
    () => inboxRows(eventIds),
    (rows) => rows.length === 0,
    30_000,
    'applied inbox rows deleted',
  );
});

it('applies a payment delivered twice once, before and after Redis lost its job', async () => {
  const [order] = await reservations(1);
  const { couponId, orderId, reservationId } = order as Awaited<ReturnType<typeof reservations>>[number];
  await stopWorkers();

  const event = paymentEvent('PAYMENT_COMPLETED', orderId);
  await publish(event, event);
  await allCommitted();
  expect(await inboxRows([event.eventId])).toHaveLength(1);
  await emptyRedis();

  await stack.startWorker();
  await eventually(
    () => couponRow(couponId),
    (c) => c?.status === 'USED',
    60_000,
    'coupon USED',
  );
  await eventually(
    () => inboxRows([event.eventId]),
    (rows) => rows.length === 0,
    30_000,
    'applied inbox row deleted',
  );

  // Delivered a third time with its job gone from Redis: a new job, which finds the event processed.
  await emptyRedis();
  await publish(event);
  await allCommitted();
  const replay = await api.settle(derivedJobId('payment', event.eventId), admin);
  expect(replay).toMatchObject({ status: 'succeeded', result: { outcome: 'DUPLICATE', earlier: { outcome: 'APPLIED' } } });
  await eventually(
    () => inboxRows([event.eventId]),
    (rows) => rows.length === 0,
    30_000,
    'redelivered row deleted',
  );

  expect(await processedEvents(event.eventId)).toEqual([{ outcome: 'APPLIED', reason_code: null, reservation_id: reservationId }]);
  expect((await reservationsOf(couponId)).map((r) => r.status)).toEqual(['CONFIRMED']);
  expect(workerLines((l) => l.msg === 'PAYMENT_COMPLETED applied' && l.eventId === event.eventId)).toHaveLength(1);
});

it('keeps a redriven payment ahead of the refund that followed it', async () => {
  const [order] = await reservations(1);
  const { couponId, orderId, reservationId } = order as Awaited<ReturnType<typeof reservations>>[number];
  await stopWorkers();

  // The payment is accepted, then Redis loses its job; the refund arrives after, into the new Redis.
  const paid = paymentEvent('PAYMENT_COMPLETED', orderId);
  await publish(paid);
  await allCommitted();
  await emptyRedis();
  const refund = paymentEvent('PAYMENT_REFUNDED', orderId, { eventId: `refund-${randomUUID()}` });
  await publish(refund);
  await allCommitted();
  expect(await jobsInRedis([paid.eventId, refund.eventId])).toBe(1);
  expect(await jobsInRedis([refund.eventId])).toBe(1);

  // The refund runs first and would give up after 2 attempts (under a second); the payment comes
  // back only 15 s after it was accepted. The refund must keep waiting for it, then restore the
  // coupon the payment used, as if the two had come in order.
  await stack.startWorker({ PAYMENT_WAIT_ATTEMPTS: '2', INBOX_REDRIVE_AGE_MS: '15000' });
  const name = `${STACK}-worker-${stack.workers.length}`;
  const kept = await logLinesWhen(
    name,
    (l) => l.msg === 'PAYMENT_REFUNDED keeps waiting: an earlier event of its order is not applied yet' && l.eventId === refund.eventId,
    1,
    30_000,
  );
  expect(kept.length).toBeGreaterThan(0);

  await eventually(
    () => processedEvents(refund.eventId),
    (rows) => rows.length === 1,
    60_000,
    'refund processed',
  );
  expect(await processedEvents(paid.eventId)).toEqual([{ outcome: 'APPLIED', reason_code: null, reservation_id: reservationId }]);
  expect(await processedEvents(refund.eventId)).toEqual([{ outcome: 'APPLIED', reason_code: null, reservation_id: reservationId }]);
  const { rows } = await db().query<{ status: string; refunded: boolean }>(
    'SELECT status, refunded_at IS NOT NULL AS refunded FROM reservations WHERE id = $1',
    [reservationId],
  );
  expect(rows).toEqual([{ status: 'CONFIRMED', refunded: true }]);
  expect(await couponRow(couponId)).toMatchObject({ status: 'ISSUED' });
});

it('issues the coupons of accepted user events after Redis lost their jobs', async () => {
  const trigger = `SIGNED_UP_${uniqueId('x').slice(2, 10).toUpperCase()}`;
  const eventPolicy = await createCheckoutPolicy(api, { issueMethod: 'EVENT', triggerEvent: trigger, perUserLimit: 5 });
  await stopWorkers();
  const list = Array.from({ length: 20 }, (_, i) => ({
    eventId: uniqueId(`ue${i}`),
    type: trigger,
    userId: uniqueId(`signup${i}`),
    occurredAt: new Date().toISOString(),
  }));
  const eventIds = list.map((e) => e.eventId);
  await send(
    stack.userEventsTopic,
    list.map((e) => ({ key: e.userId, value: JSON.stringify(e) })),
  );
  await allCommitted(stack.userEventsTopic);
  expect(await inboxRows(eventIds, 'user-events')).toHaveLength(list.length);
  await emptyRedis();

  await stack.startWorker();
  const issued = () =>
    db()
      .query<{ user_id: string }>('SELECT user_id FROM coupons WHERE policy_id = $1', [eventPolicy])
      .then((r) => r.rows);
  await eventually(issued, (rows) => rows.length >= list.length, 60_000, `${list.length} coupons issued`);
  // The worker deletes an applied user event's row itself (no processed_events row says it is done).
  await eventually(
    () => inboxRows(eventIds, 'user-events'),
    (rows) => rows.length === 0,
    30_000,
    'applied user events deleted',
  );
  const rows = await issued();
  expect(rows.map((r) => r.user_id).sort()).toEqual(list.map((e) => e.userId).sort());
});

it('forgets a user event delivered again after it was applied, while its completed job is still in Redis', async () => {
  const trigger = `SIGNED_UP_${uniqueId('x').slice(2, 10).toUpperCase()}`;
  const eventPolicy = await createCheckoutPolicy(api, { issueMethod: 'EVENT', triggerEvent: trigger, perUserLimit: 5 });
  const list = Array.from({ length: 10 }, (_, i) => ({
    eventId: uniqueId(`again${i}`),
    type: trigger,
    userId: uniqueId(`again${i}`),
    occurredAt: new Date().toISOString(),
  }));
  const eventIds = list.map((e) => e.eventId);
  const messages = list.map((e) => ({ key: e.userId, value: JSON.stringify(e) }));
  const issued = () =>
    db()
      .query<{ n: string }>('SELECT count(*) AS n FROM coupons WHERE policy_id = $1', [eventPolicy])
      .then((r) => Number(r.rows[0]?.n));
  await send(stack.userEventsTopic, messages);
  await eventually(issued, (n) => n === list.length, 60_000, `${list.length} coupons issued`);
  await eventually(
    () => inboxRows(eventIds, 'user-events'),
    (rows) => rows.length === 0,
    30_000,
    'applied user events deleted',
  );

  // Delivered again with no worker running: the bridge writes the rows again, and adding the jobs
  // is a no-op (the completed jobs keep their ids for an hour), so nothing would ever apply them.
  await stopWorkers();
  const completed = await Promise.all(
    eventIds.map((id) => redis.zscore(`${stack.queuePrefix}:issue:completed`, derivedJobId('user-event', id))),
  );
  expect(completed.filter((score) => score !== null)).toHaveLength(list.length);
  await send(stack.userEventsTopic, messages);
  await allCommitted(stack.userEventsTopic);
  expect(await inboxRows(eventIds, 'user-events')).toHaveLength(list.length);

  // The sweep sees the completed jobs and deletes the rows; nothing is issued twice.
  await stack.startWorker();
  await eventually(
    () => inboxRows(eventIds, 'user-events'),
    (rows) => rows.length === 0,
    30_000,
    'the rows of the redelivered, completed events deleted',
  );
  expect(await issued()).toBe(list.length);
});

it('commits no offset while Postgres is away: the event waits in Kafka, then is applied', async () => {
  const [order] = await reservations(1);
  const { couponId, orderId } = order as Awaited<ReturnType<typeof reservations>>[number];
  const { proxy, databaseUrl } = await slowPostgres(0);
  try {
    await Promise.all(stack.bridges.map((b) => stopProcess(b)));
    await stack.startBridge({ DATABASE_URL: databaseUrl });
    const bridgeLog = `${STACK}-bridge-${stack.bridges.length}`;
    await proxy.pause('refuse');

    const event = paymentEvent('PAYMENT_COMPLETED', orderId);
    await publish(event);
    const failed = await logLinesWhen(bridgeLog, (l) => l.msg === 'write 1 events to the inbox failed; retrying', 1, 30_000);
    expect(failed.length).toBeGreaterThan(0);
    // Not accepted: no job, the offset where it was (one message short), the coupon still reserved.
    const [topic] = await kafkaAdmin.fetchOffsets({ groupId: `bridge-${stack.queuePrefix}`, topics: [stack.paymentsTopic] });
    expect((topic?.partitions ?? []).reduce((sum, p) => sum + Math.max(0, Number(p.offset)), 0)).toBe(
      (published.get(stack.paymentsTopic) ?? 0) - 1,
    );
    expect(await jobsInRedis([event.eventId])).toBe(0);
    expect(await couponRow(couponId)).toMatchObject({ status: 'RESERVED' });

    await proxy.resume();
    await allCommitted();
    await eventually(
      () => couponRow(couponId),
      (c) => c?.status === 'USED',
      60_000,
      'coupon USED',
    );
    expect(await processedEvents(event.eventId)).toHaveLength(1);
  } finally {
    await proxy.resume();
    await Promise.all(stack.bridges.map((b) => stopProcess(b)));
    await proxy.close();
  }
});
