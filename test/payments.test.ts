// Payment events through a real Kafka broker, the bridge process, BullMQ and the workers: each event
// takes effect once however often it is delivered or whichever process dies, late payments are
// confirmed or recorded as conflicts, and a poison message goes to the dead-letter topic.
import { readFile } from 'node:fs/promises';
import { Queue } from 'bullmq';
import { ConfigResourceTypes } from 'kafkajs';
import IORedis from 'ioredis';
import { derivedJobId } from '../src/queues/names';
import { paymentReturnSchema } from '../src/queues/results';
import {
  couponRow,
  createCheckoutPolicy,
  eventually,
  EventProducer,
  kafkaAdmin,
  paymentEvent,
  processedEvents,
  reservationsOf,
  reserveAndSettle,
  shopperWith,
  type Shopper,
} from './support/checkout';
import { closeDb, db } from './support/db';
import { uniqueId } from './support/fixtures';
import { Api } from './support/http';
import { jobsById } from './support/jobs';
import { logFile, logLinesWhen, startStack, stopProcess, waitForLine, type Stack } from './support/stack';
import { adminToken } from './support/tokens';

let stack: Stack;
let api: Api;
let admin: string;
let policyId: string;
const events = new EventProducer();

beforeAll(async () => {
  stack = await startStack({ workers: 1, bridge: true, name: 'payments' });
  api = new Api(stack.baseUrl, 64);
  admin = await adminToken();
  policyId = await createCheckoutPolicy(api);
});

afterAll(async () => {
  await events.close();
  await api?.close();
  await stack?.stop();
  await closeDb();
});

const publish = (event: { orderId: string }) => events.publish(stack.paymentsTopic, event);

/** Stops the stack's bridges (SIGTERM) and starts one in their place with `env`. */
async function onlyBridge(env: Record<string, string>) {
  for (const bridge of stack.bridges) await stopProcess(bridge);
  return stack.startBridge(env);
}

async function reserved(shopper?: Shopper) {
  const s = shopper ?? (await shopperWith(api, policyId));
  const couponId = s.coupons[0] as string;
  const orderId = uniqueId('order');
  const job = await reserveAndSettle(api, s, couponId, orderId);
  expect(job.status).toBe('succeeded');
  return { shopper: s, couponId, orderId, reservationId: job.result.reservationId as string };
}

const couponStatus = (couponId: string) =>
  eventually(
    () => couponRow(couponId),
    () => true,
  ).then((c) => c?.status);
const until = (couponId: string, status: string) =>
  eventually(
    () => couponRow(couponId),
    (c) => c?.status === status,
    30_000,
    `coupon ${status}`,
  );
/** The settled job of a payment event, once the bridge has made it. */
async function paymentJob(eventId: string) {
  const jobId = derivedJobId('payment', eventId);
  await eventually(
    () => api.get(`/api/v1/jobs/${jobId}`, admin),
    (r) => r.status !== 404,
    30_000,
    `job ${jobId} created`,
  );
  return api.settle(jobId, admin);
}

/**
 * Waits until the worker has run the job of an event that cannot apply yet and put it back to wait
 * (a failed attempt, retried later): the point past which the event would have taken effect.
 */
async function deferred(eventId: string) {
  const jobId = derivedJobId('payment', eventId);
  const read = async () => (await jobsById(stack.queuePrefix, 'payments', [jobId]))[0];
  const job = await eventually(read, (j) => (j?.attemptsMade ?? 0) >= 1, 30_000, `job ${jobId} deferred`);
  expect(job?.finishedOn).toBeUndefined();
}

async function expirePending(couponId: string) {
  await db().query("UPDATE reservations SET expires_at = now() - interval '1 second' WHERE coupon_id = $1 AND status = 'PENDING'", [
    couponId,
  ]);
  await eventually(
    () => reservationsOf(couponId),
    (rows) => rows.every((r) => r.status !== 'PENDING'),
    10_000,
    'reservation expired',
  );
}

describe('PAYMENT_COMPLETED', () => {
  it('uses the coupon once, with the event delivered twice and again after its job is gone', async () => {
    const { couponId, orderId, reservationId } = await reserved();
    const event = paymentEvent('PAYMENT_COMPLETED', orderId, { reservationId, amount: 47_000 });
    await publish(event);
    await publish(event);
    await until(couponId, 'USED');
    expect(await paymentJob(event.eventId)).toMatchObject({
      type: 'payment',
      status: 'succeeded',
      result: { eventId: event.eventId, outcome: 'APPLIED', reservation: { status: 'CONFIRMED' } },
    });

    // Once the job is removed from Redis, a redelivery makes a new job: Postgres knows the event.
    const connection = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
    const queue = new Queue('payments', { connection, prefix: stack.queuePrefix });
    try {
      await (await queue.getJob(derivedJobId('payment', event.eventId)))?.remove();
      await publish(event);
      const replay = await eventually(
        () => queue.getJob(derivedJobId('payment', event.eventId)),
        (j) => Boolean(j?.finishedOn),
        30_000,
        'redelivered job done',
      );
      expect(paymentReturnSchema.parse(replay?.returnvalue)).toMatchObject({ outcome: 'succeeded', result: { outcome: 'DUPLICATE' } });
    } finally {
      await queue.close();
      connection.disconnect();
    }

    expect(await processedEvents(event.eventId)).toEqual([{ outcome: 'APPLIED', reason_code: null, reservation_id: reservationId }]);
    const [reservation] = await reservationsOf(couponId);
    expect(reservation).toMatchObject({ status: 'CONFIRMED', end_reason: 'PAYMENT_COMPLETED' });
    expect(await couponRow(couponId)).toMatchObject({ status: 'USED', order_id: orderId, reservation_id: reservationId });
  });

  it('finds the reservation by orderId alone', async () => {
    const { couponId, orderId } = await reserved();
    await publish(paymentEvent('PAYMENT_COMPLETED', orderId));
    await until(couponId, 'USED');
  });

  it('is applied once when the bridge is SIGKILLed after enqueueing and before committing', async () => {
    const { couponId, orderId } = await reserved();
    const hanging = await onlyBridge({ FAILPOINTS: 'bridge.before-commit=hang' });
    const event = paymentEvent('PAYMENT_COMPLETED', orderId);
    await publish(event);
    await waitForLine(hanging, 'failpoint bridge.before-commit', 30_000);
    // The job was handed over before the failpoint, so the worker applies it while the offset is uncommitted.
    await until(couponId, 'USED');
    await stopProcess(hanging, 'SIGKILL');

    // The next bridge gets the message again (its offset was never committed) and re-adds the same job id.
    const next = await stack.startBridge();
    const name = `payments-bridge-${stack.bridges.length}`;
    await eventually(
      async () =>
        (await readFile(logFile(name), 'utf8'))
          .split('\n')
          .filter((l) => l.includes('"consumer lag"') && l.includes(stack.paymentsTopic))
          .map((l) => JSON.parse(l).lag as number),
      (lags) => lags.at(-1) === 0,
      40_000,
      'lag back to 0 after the redelivery',
    );
    expect(next.exitCode).toBeNull();
    expect(await processedEvents(event.eventId)).toHaveLength(1);
    const rows = await reservationsOf(couponId);
    expect(rows.map((r) => r.status)).toEqual(['CONFIRMED']);
    expect(await couponRow(couponId)).toMatchObject({ status: 'USED', order_id: orderId });
  });
});

describe('offset commits', () => {
  /** The payments topic's offsets, summed over its partitions: the group's committed ones and the topic's end. */
  async function offsets(): Promise<{ committed: number; end: number }> {
    const admin = kafkaAdmin('payments-test');
    await admin.connect();
    try {
      const [group] = await admin.fetchOffsets({ groupId: `bridge-${stack.queuePrefix}`, topics: [stack.paymentsTopic] });
      const ends = await admin.fetchTopicOffsets(stack.paymentsTopic);
      return {
        committed: (group?.partitions ?? []).reduce((sum, p) => sum + Math.max(0, Number(p.offset)), 0),
        end: ends.reduce((sum, p) => sum + Number(p.high), 0),
      };
    } finally {
      await admin.disconnect();
    }
  }

  it('are deferred, and a bridge stopped with SIGTERM commits what it handed over before it leaves', async () => {
    const { couponId, orderId } = await reserved();
    // No commit before its stop: the interval is far longer than the test.
    const bridge = await onlyBridge({ KAFKA_COMMIT_INTERVAL_MS: '600000' });
    const event = paymentEvent('PAYMENT_COMPLETED', orderId);
    await publish(event);
    await until(couponId, 'USED');
    const before = await offsets();
    expect(before.committed).toBeLessThan(before.end);

    await stopProcess(bridge, 'SIGTERM');
    expect({ exitCode: bridge.exitCode, signal: bridge.signalCode }).toEqual({ exitCode: 0, signal: null });
    expect(await offsets()).toEqual({ committed: before.end, end: before.end });
    expect(await processedEvents(event.eventId)).toHaveLength(1);
    // A bridge for the tests that follow, with the default interval.
    await stack.startBridge();
  });
});

describe('PAYMENT_FAILED and PAYMENT_CANCELLED', () => {
  it('release the coupon, and a later COMPLETED of the same order still confirms it', async () => {
    const failed = await reserved();
    const cancelled = await reserved();
    await publish(paymentEvent('PAYMENT_FAILED', failed.orderId));
    await publish(paymentEvent('PAYMENT_CANCELLED', cancelled.orderId));
    await until(failed.couponId, 'ISSUED');
    await until(cancelled.couponId, 'ISSUED');
    expect((await reservationsOf(failed.couponId))[0]).toMatchObject({ status: 'CANCELLED', end_reason: 'PAYMENT_FAILED' });
    expect((await reservationsOf(cancelled.couponId))[0]).toMatchObject({ status: 'CANCELLED', end_reason: 'PAYMENT_CANCELLED' });

    // The shopper retried the payment and it went through: the coupon is free and valid, so it is used.
    await publish(paymentEvent('PAYMENT_COMPLETED', failed.orderId));
    await until(failed.couponId, 'USED');
    expect((await reservationsOf(failed.couponId))[0]).toMatchObject({ status: 'CONFIRMED', end_reason: 'PAYMENT_COMPLETED_LATE' });
  });
});

describe('late payments', () => {
  it('confirm a reservation that timed out while the coupon is still free', async () => {
    const { couponId, orderId } = await reserved();
    await expirePending(couponId);
    expect(await couponStatus(couponId)).toBe('ISSUED');
    await publish(paymentEvent('PAYMENT_COMPLETED', orderId));
    await until(couponId, 'USED');
    expect((await reservationsOf(couponId))[0]).toMatchObject({ status: 'CONFIRMED', end_reason: 'PAYMENT_COMPLETED_LATE' });
  });

  it('are recorded as a conflict, never a second use, when the coupon is reserved for another order', async () => {
    const shopper = await shopperWith(api, policyId);
    const late = await reserved(shopper);
    await expirePending(late.couponId);
    const now = await reserveAndSettle(api, shopper, late.couponId, uniqueId('second-order'));
    expect(now.status).toBe('succeeded');

    const event = paymentEvent('PAYMENT_COMPLETED', late.orderId);
    await publish(event);
    const job = await paymentJob(event.eventId);
    expect(job.result).toMatchObject({ outcome: 'CONFLICT', reason: { code: 'COUPON_NOT_AVAILABLE' } });
    expect(await processedEvents(event.eventId)).toEqual([
      { outcome: 'CONFLICT', reason_code: 'COUPON_NOT_AVAILABLE', reservation_id: late.reservationId },
    ]);
    expect(await couponRow(late.couponId)).toMatchObject({ status: 'RESERVED', reservation_id: now.result.reservationId });
    expect((await reservationsOf(late.couponId)).map((r) => r.status)).toEqual(['EXPIRED', 'PENDING']);
    // The worker's log line may reach its file a moment after the job's result: poll for it.
    const said = await logLinesWhen(
      'payments-worker-1',
      (l) => l.eventId === event.eventId && String(l.msg).startsWith('payment conflict'),
    );
    expect(said).toHaveLength(1);
  });
});

describe('PAYMENT_REFUNDED', () => {
  it('restores the coupon, also when the refund reached the worker before its payment', async () => {
    const inOrder = await reserved();
    await publish(paymentEvent('PAYMENT_COMPLETED', inOrder.orderId));
    await until(inOrder.couponId, 'USED');
    await publish(paymentEvent('PAYMENT_REFUNDED', inOrder.orderId));
    await until(inOrder.couponId, 'ISSUED');

    // The refund overtakes its payment: it waits (retried with backoff) until the payment lands.
    const overtaken = await reserved();
    const refund = paymentEvent('PAYMENT_REFUNDED', overtaken.orderId);
    await publish(refund);
    await deferred(refund.eventId);
    expect(await couponStatus(overtaken.couponId)).toBe('RESERVED');
    await publish(paymentEvent('PAYMENT_COMPLETED', overtaken.orderId));
    expect((await paymentJob(refund.eventId)).result).toMatchObject({ outcome: 'APPLIED' });
    await until(overtaken.couponId, 'ISSUED');
    const [row] = await reservationsOf(overtaken.couponId);
    expect(row?.status).toBe('CONFIRMED');
  });

  it('waits too when the refund overtakes a late payment of a reservation that timed out', async () => {
    const late = await reserved();
    await expirePending(late.couponId);
    const refund = paymentEvent('PAYMENT_REFUNDED', late.orderId);
    await publish(refund);
    await deferred(refund.eventId);
    expect(await couponStatus(late.couponId)).toBe('ISSUED');
    await publish(paymentEvent('PAYMENT_COMPLETED', late.orderId));
    expect((await paymentJob(refund.eventId)).result).toMatchObject({ outcome: 'APPLIED' });
    // Paid late, then refunded: the coupon is back, whichever of the two the worker saw first.
    await until(late.couponId, 'ISSUED');
    expect((await reservationsOf(late.couponId))[0]).toMatchObject({ status: 'CONFIRMED', end_reason: 'PAYMENT_COMPLETED_LATE' });
  });
});

describe('which reservation an event is about', () => {
  it('finds the one coupon an order holds, so a payment without reservationId confirms it', async () => {
    const shopper = await shopperWith(api, policyId, 2);
    const [a, b] = shopper.coupons as [string, string];
    const orderId = uniqueId('two-coupon-order');
    const first = await reserveAndSettle(api, shopper, a, orderId);
    expect(first.status).toBe('succeeded');
    // A second coupon on the order is refused (I10): the discount cannot be taken twice.
    expect(await reserveAndSettle(api, shopper, b, orderId)).toMatchObject({
      status: 'rejected',
      reason: { code: 'ORDER_ALREADY_HAS_COUPON' },
    });

    const vague = paymentEvent('PAYMENT_COMPLETED', orderId);
    await publish(vague);
    expect((await paymentJob(vague.eventId)).result).toMatchObject({
      outcome: 'APPLIED',
      reservation: { reservationId: first.result.reservationId, status: 'CONFIRMED' },
    });
    expect([(await couponRow(a))?.status, (await couponRow(b))?.status]).toEqual(['USED', 'ISSUED']);
  });

  it('touches nothing of an order for an event naming a user who does not own it, and refuses them a reservation under it', async () => {
    const owner = await shopperWith(api, policyId);
    const intruder = await shopperWith(api, policyId);
    const orderId = uniqueId('order');
    expect((await reserveAndSettle(api, owner, owner.coupons[0] as string, orderId)).status).toBe('succeeded');
    expect(await reserveAndSettle(api, intruder, intruder.coupons[0] as string, orderId)).toMatchObject({
      status: 'rejected',
      reason: { code: 'ORDER_NOT_OWNED' },
    });

    for (const type of ['PAYMENT_CANCELLED', 'PAYMENT_COMPLETED']) {
      const foreign = paymentEvent(type, orderId, { userId: intruder.id });
      await publish(foreign);
      expect((await paymentJob(foreign.eventId)).result).toMatchObject({ outcome: 'CONFLICT', reason: { code: 'ORDER_NOT_OWNED' } });
      expect(await processedEvents(foreign.eventId)).toEqual([
        { outcome: 'CONFLICT', reason_code: 'ORDER_NOT_OWNED', reservation_id: null },
      ]);
    }
    expect((await couponRow(owner.coupons[0] as string))?.status).toBe('RESERVED');

    await publish(paymentEvent('PAYMENT_COMPLETED', orderId, { userId: owner.id }));
    await until(owner.coupons[0] as string, 'USED');
    expect((await couponRow(intruder.coupons[0] as string))?.status).toBe('ISSUED');
  });

  it('records a late payment as a conflict when its order has taken another coupon since', async () => {
    const shopper = await shopperWith(api, policyId, 2);
    const [a, b] = shopper.coupons as [string, string];
    const late = await reserved({ ...shopper, coupons: [a] });
    await expirePending(a);
    const now = await reserveAndSettle(api, shopper, b, late.orderId);
    expect(now.status).toBe('succeeded');

    const event = paymentEvent('PAYMENT_COMPLETED', late.orderId, { reservationId: late.reservationId });
    await publish(event);
    expect((await paymentJob(event.eventId)).result).toMatchObject({ outcome: 'CONFLICT', reason: { code: 'ORDER_ALREADY_HAS_COUPON' } });
    expect(await processedEvents(event.eventId)).toEqual([
      { outcome: 'CONFLICT', reason_code: 'ORDER_ALREADY_HAS_COUPON', reservation_id: late.reservationId },
    ]);
    expect([(await couponRow(a))?.status, (await couponRow(b))?.status]).toEqual(['ISSUED', 'RESERVED']);
    expect((await reservationsOf(a)).map((r) => r.status)).toEqual(['EXPIRED']);
  });
});

describe('poison messages', () => {
  it('go to the dead-letter topic with the reason, and the next message of the partition is applied', async () => {
    const { couponId, orderId } = await reserved();
    const good = paymentEvent('PAYMENT_COMPLETED', orderId);
    await events.send(stack.paymentsTopic, [
      { key: orderId, value: 'this is not json', partition: 0 },
      { key: orderId, value: JSON.stringify({ ...good, eventId: uniqueId('bad'), type: 'PAYMENT_EXPLODED' }), partition: 0 },
      { key: orderId, value: JSON.stringify(good), partition: 0 },
    ]);
    await until(couponId, 'USED');
    const dead = await events.readAll(`${stack.paymentsTopic}.dlq`, 2);
    expect(dead).toHaveLength(2);
    expect(dead.map((d) => d.value)).toContain('this is not json');
    expect(dead.map((d) => d.headers['dlq-reason'])).toEqual(
      expect.arrayContaining(['the value is not JSON', expect.stringMatching(/^not a payment event: type/)]),
    );
    for (const d of dead) expect(d.headers).toMatchObject({ 'dlq-source-topic': stack.paymentsTopic, 'dlq-source-partition': '0' });
  });

  it('that even the dead-letter topic refuses are logged and skipped, never blocking the partition', async () => {
    const dlq = `${stack.paymentsTopic}.dlq`;
    const admin = kafkaAdmin();
    await admin.connect();
    const setLimit = (bytes: string) =>
      admin.alterConfigs({
        validateOnly: false,
        resources: [{ type: ConfigResourceTypes.TOPIC, name: dlq, configEntries: [{ name: 'max.message.bytes', value: bytes }] }],
      });
    try {
      await setLimit('2000');
      // The broker applies a topic's new limit a moment after it accepted the change (seconds on a
      // broker that has just started): probe until a message of this size is refused as too large.
      // A probe taken before that stays in the dead-letter topic, after what the test above counted.
      await eventually(
        () =>
          events.send(dlq, [{ key: 'probe', value: 'x'.repeat(5_000) }]).then(
            () => 'accepted',
            (error: { type?: string }) => error.type ?? 'failed',
          ),
        (outcome) => outcome === 'MESSAGE_TOO_LARGE',
        20_000,
        'the dead-letter topic refusing large messages',
      );
      const { couponId, orderId } = await reserved();
      await events.send(stack.paymentsTopic, [
        { key: orderId, value: 'x'.repeat(5_000), partition: 1 },
        { key: orderId, value: JSON.stringify(paymentEvent('PAYMENT_COMPLETED', orderId)), partition: 1 },
      ]);
      await until(couponId, 'USED');
      // The bridge running now (earlier tests replaced the first) says what it skipped, and where.
      const skipped = await eventually(
        async () =>
          (await readFile(logFile(`payments-bridge-${stack.bridges.length}`), 'utf8'))
            .split('\n')
            .filter((l) => l.includes('could not be dead-lettered')),
        (lines) => lines.length > 0,
        10_000,
        'the skip logged',
      );
      expect(JSON.parse(skipped[0] as string)).toMatchObject({ level: 'error', partition: 1, reason: 'the value is not JSON' });
    } finally {
      await setLimit('1048588').catch(() => undefined);
      await admin.disconnect();
    }
  });
});

describe('PAYMENT_APPLY=bridge: payments applied by the bridge', () => {
  const bridgeLog = () => `payments-bridge-${stack.bridges.length}`;
  const paymentJobOf = async (eventId: string) => (await jobsById(stack.queuePrefix, 'payments', [derivedJobId('payment', eventId)]))[0];
  /** The bridge's log lines about `eventId` whose message contains `text`, once there are `atLeast`. */
  const told = (eventId: string, text: string, atLeast = 1) =>
    logLinesWhen(bridgeLog(), (l) => l.eventId === eventId && String(l.msg).includes(text), atLeast, 30_000);

  beforeAll(async () => {
    await onlyBridge({ PAYMENT_APPLY: 'bridge' });
  });
  afterAll(async () => {
    // The tests that follow, if any, meet the default bridge again.
    await onlyBridge({});
  });

  it('uses the coupon once, without a job, with the event delivered twice', async () => {
    const { couponId, orderId, reservationId } = await reserved();
    const event = paymentEvent('PAYMENT_COMPLETED', orderId, { reservationId });
    await publish(event);
    await until(couponId, 'USED');
    expect(await told(event.eventId, 'PAYMENT_COMPLETED applied')).toHaveLength(1);
    // Delivered again once applied (two copies in one fetch are applied once without a line each:
    // src/bridge/in-place.test.ts).
    await publish(event);
    expect(await told(event.eventId, 'already processed')).toHaveLength(1);
    expect(await processedEvents(event.eventId)).toHaveLength(1);
    expect((await reservationsOf(couponId)).map((r) => r.status)).toEqual(['CONFIRMED']);
    // Applied where it stood: no job was added for it, and none for its redelivery.
    expect(await paymentJobOf(event.eventId)).toBeUndefined();
  });

  it('makes a job of a refund that arrives before its payment, and the worker applies it once the payment has', async () => {
    const overtaken = await reserved();
    const refund = paymentEvent('PAYMENT_REFUNDED', overtaken.orderId);
    await publish(refund);
    expect(await told(refund.eventId, 'queued as a job')).toHaveLength(1);
    await deferred(refund.eventId);
    expect(await couponStatus(overtaken.couponId)).toBe('RESERVED');

    const payment = paymentEvent('PAYMENT_COMPLETED', overtaken.orderId);
    await publish(payment);
    expect(await told(payment.eventId, 'PAYMENT_COMPLETED applied')).toHaveLength(1);
    expect((await paymentJob(refund.eventId)).result).toMatchObject({ outcome: 'APPLIED' });
    await until(overtaken.couponId, 'ISSUED');
    expect(await paymentJobOf(payment.eventId)).toBeUndefined();
    const [row] = await reservationsOf(overtaken.couponId);
    expect(row?.status).toBe('CONFIRMED');
  });

  it('is applied once when the bridge is SIGKILLed after applying and before committing', async () => {
    const { couponId, orderId } = await reserved();
    const hanging = await onlyBridge({ PAYMENT_APPLY: 'bridge', FAILPOINTS: 'bridge.before-commit=hang' });
    const event = paymentEvent('PAYMENT_COMPLETED', orderId);
    await publish(event);
    await waitForLine(hanging, 'failpoint bridge.before-commit', 30_000);
    // Applied before the failpoint, while its offset is not committed: the kill lands between the two.
    expect((await couponRow(couponId))?.status).toBe('USED');
    await stopProcess(hanging, 'SIGKILL');

    // The next bridge gets the message again and finds it processed.
    await onlyBridge({ PAYMENT_APPLY: 'bridge' });
    expect(await told(event.eventId, 'already processed')).toHaveLength(1);
    expect(await processedEvents(event.eventId)).toHaveLength(1);
    expect((await reservationsOf(couponId)).map((r) => r.status)).toEqual(['CONFIRMED']);
    expect(await couponRow(couponId)).toMatchObject({ status: 'USED', order_id: orderId });
    expect(await paymentJobOf(event.eventId)).toBeUndefined();
  });
});
