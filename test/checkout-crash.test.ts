// Crash safety of checkout: workers SIGKILLed while reservations are being made and while payments
// are being applied, with every payment event delivered twice. Afterwards every coupon is used
// exactly once, by the order that reserved it, and every event took effect once.
import type { ChildProcess } from 'node:child_process';
import { createCheckoutPolicy, eventually, EventProducer, paymentEvent, reserve } from './support/checkout';
import { closeDb, db } from './support/db';
import { uniqueId } from './support/fixtures';
import { Api, mapLimit } from './support/http';
import { activeJobIds, jobsById, wasTakenOver } from './support/jobs';
import { startStack, type Stack } from './support/stack';
import { slowPostgres, type TcpProxy } from './support/tcp-proxy';
import { tokenFor } from './support/tokens';

let stack: Stack;
let api: Api;
let pgProxy: TcpProxy;
let workerEnv: Record<string, string>;
const events = new EventProducer();

// Short locks so a killed worker's jobs are taken over within seconds; a slow Postgres (20 ms each
// way) keeps jobs in flight long enough for the kills to land on them. One worker runs up to each
// kill, so every job active once it is dead is one the kill cut off.
const FAST_STALL = { JOB_LOCK_MS: '2000', JOB_STALLED_INTERVAL_MS: '1000', WORKER_CONCURRENCY: '16' };
const SHOPPERS = 300;

beforeAll(async () => {
  const slow = await slowPostgres(20);
  pgProxy = slow.proxy;
  workerEnv = { ...FAST_STALL, DATABASE_URL: slow.databaseUrl };
  stack = await startStack({ workers: 0, bridge: true, name: 'checkout-crash', env: FAST_STALL });
  await stack.startWorker(workerEnv);
  api = new Api(stack.baseUrl, 128);
});

afterAll(async () => {
  await events.close();
  await api?.close();
  await stack?.stop();
  await pgProxy?.close();
  await closeDb();
});

function killed(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

/**
 * Once a job of the queue is active, SIGKILLs the one live worker and reads which jobs of the queue
 * are still active: with no worker left, those are the ones the kill cut off. Then starts
 * `replacements` fresh workers, as a process manager would.
 */
async function killMidJob(queueName: string, replacements: number): Promise<string[]> {
  const [victim, ...others] = stack.workers.filter((w) => w.exitCode === null && w.signalCode === null);
  expect(others).toEqual([]);
  await eventually(
    () => activeJobIds(stack.queuePrefix, queueName),
    (ids) => ids.length > 0,
    60_000,
    `a ${queueName} job in flight`,
  );
  await killed(victim as ChildProcess);
  const cutOff = await activeJobIds(stack.queuePrefix, queueName);
  await Promise.all(Array.from({ length: replacements }, () => stack.startWorker(workerEnv)));
  return cutOff;
}

/** Whether each job was taken over (started again after its worker died) and finished. */
async function takenOverAndFinished(queueName: string, ids: string[]) {
  const jobs = await jobsById(stack.queuePrefix, queueName, ids);
  return jobs.map((j) => j && { finished: j.finishedOn !== undefined, takenOver: wasTakenOver(j) });
}

interface Shopper {
  userId: string;
  couponId: string;
  orderId: string;
  token: string;
}

/** One coupon per shopper, written straight into Postgres (issuance has its own crash test). */
async function shoppersWithCoupons(policyId: string): Promise<Shopper[]> {
  const tag = uniqueId('cc');
  await db().query(
    `INSERT INTO coupons (id, policy_id, user_id, request_id, expires_at)
     SELECT $2 || '-' || g, $1, $2 || '-u' || g, $2 || '-r' || g, now() + interval '7 days' FROM generate_series(1, $3::int) g`,
    [policyId, tag, SHOPPERS],
  );
  const shoppers = Array.from({ length: SHOPPERS }, (_, i) => ({
    userId: `${tag}-u${i + 1}`,
    couponId: `${tag}-${i + 1}`,
    orderId: `${tag}-o${i + 1}`,
  }));
  const tokens = await Promise.all(shoppers.map((s) => tokenFor(s.userId)));
  return shoppers.map((s, i) => ({ ...s, token: tokens[i] as string }));
}

/**
 * Reservations, with the worker killed a third of the way in, on a reserve job in flight. Each
 * shopper's reservation id, and the reserve jobs the kill cut off.
 */
async function reserveThroughAKill(shoppers: Shopper[]): Promise<{ reservationIds: string[]; cutOff: string[] }> {
  let accepted = 0;
  const firstKill = eventually(
    async () => accepted,
    (n) => n >= 100,
    60_000,
    '100 reserves accepted',
  ).then(() => killMidJob('checkout', 1));
  firstKill.catch(() => undefined); // awaited below, once the requests are in
  const replies = await mapLimit(shoppers, 64, async (s) => {
    const reply = await reserve(api, s.token, { couponId: s.couponId, orderId: s.orderId, orderAmount: 30_000 });
    accepted += reply.status === 202 ? 1 : 0;
    return reply;
  });
  const cutOff = await firstKill;
  expect(cutOff.length).toBeGreaterThan(0);
  expect(replies.map((r) => r.status)).toEqual(Array(SHOPPERS).fill(202));
  const reserved = await mapLimit(replies, 64, (reply, i) => api.settle(reply.body.jobId, shoppers[i]!.token, 120_000));
  expect(reserved.map((j) => j.status)).toEqual(Array(SHOPPERS).fill('succeeded')); // I7: none lost, none failed
  return { reservationIds: reserved.map((j) => j.result.reservationId as string), cutOff };
}

const usedCount = async (policyId: string) =>
  Number(
    (await db().query<{ n: string }>("SELECT count(*) AS n FROM coupons WHERE policy_id = $1 AND status = 'USED'", [policyId])).rows[0]?.n,
  );

/**
 * Payments, every event published twice, with another worker killed while they are applied. The
 * events (one per shopper), and the payment jobs the kill cut off.
 */
async function payThroughAKill(policyId: string, shoppers: Shopper[], reservationIds: string[]) {
  const payments = shoppers.map((s, i) => paymentEvent('PAYMENT_COMPLETED', s.orderId, { reservationId: reservationIds[i] }));
  const messages = payments.flatMap((e) => [e, e]).map((e) => ({ key: e.orderId, value: JSON.stringify(e) }));
  await events.send(stack.paymentsTopic, messages.slice(0, 200));
  await eventually(
    () => usedCount(policyId),
    (n) => n >= 20,
    60_000,
    'payments under way',
  );
  const secondKill = killMidJob('payments', 2);
  await events.send(stack.paymentsTopic, messages.slice(200));
  const cutOff = await secondKill;
  expect(cutOff.length).toBeGreaterThan(0);
  return { payments, cutOff };
}

/** I4: once every coupon is used, each is used by the order that reserved it, under that reservation. */
async function expectEachUsedByItsOrder(policyId: string, shoppers: Shopper[], reservationIds: string[]): Promise<void> {
  const usedAll = await eventually(
    async () =>
      (
        await db().query<{ id: string; status: string; order_id: string; reservation_id: string }>(
          'SELECT id, status, order_id, reservation_id FROM coupons WHERE policy_id = $1',
          [policyId],
        )
      ).rows,
    (rows) => rows.every((r) => r.status === 'USED'),
    120_000,
    'every coupon used',
  );
  const byCoupon = new Map(shoppers.map((s, i) => [s.couponId, { orderId: s.orderId, reservationId: reservationIds[i] }]));
  for (const row of usedAll) {
    expect({ order: row.order_id, reservation: row.reservation_id }).toEqual({
      order: byCoupon.get(row.id)?.orderId,
      reservation: byCoupon.get(row.id)?.reservationId,
    });
  }
}

describe('workers killed mid-checkout', () => {
  it('keeps I4, I5 and I7: each coupon reserved once, used once by its order, each event applied once', async () => {
    const policyId = await createCheckoutPolicy(api);
    const shoppers = await shoppersWithCoupons(policyId);
    const { reservationIds, cutOff: reservesCutOff } = await reserveThroughAKill(shoppers);
    const { payments, cutOff: paymentsCutOff } = await payThroughAKill(policyId, shoppers, reservationIds);
    await expectEachUsedByItsOrder(policyId, shoppers, reservationIds);
    const { rows: reservations } = await db().query<{ coupon_id: string; status: string }>(
      'SELECT r.coupon_id, r.status FROM reservations r JOIN coupons c ON c.id = r.coupon_id WHERE c.policy_id = $1',
      [policyId],
    );
    expect(reservations).toHaveLength(SHOPPERS); // one reservation per coupon, though jobs ran twice
    expect(reservations.every((r) => r.status === 'CONFIRMED')).toBe(true);
    const { rows: processed } = await db().query<{ outcome: string }>(
      "SELECT outcome FROM processed_events WHERE source = 'payments' AND event_id = ANY($1)",
      [payments.map((p) => p.eventId)],
    );
    expect(processed).toHaveLength(SHOPPERS); // I5: each event recorded once
    expect(processed.every((p) => p.outcome === 'APPLIED')).toBe(true);
    // Each kill cut jobs off mid-flight, and other workers took every one of them over and finished it.
    expect(await takenOverAndFinished('checkout', reservesCutOff)).toEqual(reservesCutOff.map(() => ({ finished: true, takenOver: true })));
    expect(await takenOverAndFinished('payments', paymentsCutOff)).toEqual(paymentsCutOff.map(() => ({ finished: true, takenOver: true })));
  });
});
