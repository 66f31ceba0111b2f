// A policy's issuedCount and usedCount, kept by the writes (src/storage/sql/coupons_count.sql), equal the coupon rows
// after every kind of change the service makes: a flash sale through the batched issue path, a
// checkout to USED (an admin confirm and a Kafka payment), a refund that restores the coupon, and a
// reservation that times out. Real web, worker and bridge processes.
import { couponRow, eventually, EventProducer, paymentEvent, reservationsOf, reserveAndSettle, type Shopper } from './support/checkout';
import { closeDb, db } from './support/db';
import { createPolicy, uniqueId } from './support/fixtures';
import { Api, mapLimit } from './support/http';
import { startStack, type Stack } from './support/stack';
import { adminToken, tokenFor } from './support/tokens';

let stack: Stack;
let api: Api;
let admin: string;
const events = new EventProducer();

beforeAll(async () => {
  stack = await startStack({ workers: 1, bridge: true, name: 'policy-counters' });
  api = new Api(stack.baseUrl, 64);
  admin = await adminToken();
});

afterAll(async () => {
  await events.close();
  await api?.close();
  await stack?.stop();
  await closeDb();
});

/** What an admin reads of the policy, and what the rows say. */
async function counts(policyId: string) {
  const read = await api.get(`/api/v1/coupons/policies/${policyId}`, admin);
  const { rows } = await db().query<{ issued: string; used: string }>(
    "SELECT count(*) AS issued, count(*) FILTER (WHERE status = 'USED') AS used FROM coupons WHERE policy_id = $1",
    [policyId],
  );
  return {
    read: { issued: read.body.issuedCount as number, used: read.body.usedCount as number },
    rows: { issued: Number(rows[0]?.issued), used: Number(rows[0]?.used) },
  };
}

const until = (couponId: string, status: string) =>
  eventually(
    () => couponRow(couponId),
    (row) => row?.status === status,
    30_000,
    `coupon ${status}`,
  );

describe('policy counters', () => {
  it('equal the rows after a flash sale, a checkout to USED, a refund and a timeout', async () => {
    const STOCK = 60;
    const policyId = await createPolicy(api, { issueMethod: 'FIRST_COME', totalQuantity: STOCK, perUserLimit: 1 });

    // The sale: 200 users at once for 60 coupons.
    const users = await Promise.all(
      Array.from({ length: 200 }, async () => {
        const id = uniqueId('sale');
        return { id, token: await tokenFor(id) };
      }),
    );
    const outcomes = await mapLimit(users, 64, async (u) => {
      const reply = await api.post('/api/v1/coupons/issue', u.token, { policyId });
      const job = await api.settle(reply.body.jobId, u.token);
      return { user: u, job };
    });
    const winners: Shopper[] = outcomes
      .filter((o) => o.job.status === 'succeeded')
      .map((o) => ({ id: o.user.id, token: o.user.token, coupons: [o.job.result.id as string] }));
    expect(winners).toHaveLength(STOCK);
    expect(await counts(policyId)).toEqual({ read: { issued: STOCK, used: 0 }, rows: { issued: STOCK, used: 0 } });
    expect((await api.get(`/api/v1/coupons/policies/${policyId}`, winners[0]!.token)).body.soldOut).toBe(true);

    // Checkout to USED: three by an admin confirm, two by a payment event delivered twice in one burst
    // (one turn of the worker decides and applies them together; each coupon counts once).
    const orders = await Promise.all(
      winners.slice(0, 6).map(async (w) => {
        const job = await reserveAndSettle(api, w, w.coupons[0]!);
        expect(job.status).toBe('succeeded');
        return { couponId: w.coupons[0]!, orderId: job.result.orderId as string, reservationId: job.result.reservationId as string };
      }),
    );
    for (const o of orders.slice(0, 3)) {
      const reply = await api.call('POST', `/api/v1/coupons/reservations/${o.reservationId}/confirm`, {
        token: admin,
        headers: { prefer: 'wait=10' },
      });
      expect(reply.body.status).toBe('succeeded');
    }
    const paid = orders.slice(3, 5).map((o) => paymentEvent('PAYMENT_COMPLETED', o.orderId));
    await events.send(
      stack.paymentsTopic,
      paid.flatMap((e) => [e, e]).map((e) => ({ key: e.orderId, value: JSON.stringify(e) })),
    );
    for (const o of orders.slice(0, 5)) await until(o.couponId, 'USED');
    expect(await counts(policyId)).toEqual({ read: { issued: STOCK, used: 5 }, rows: { issued: STOCK, used: 5 } });

    // A refund gives a coupon back (USED -> ISSUED).
    await events.publish(stack.paymentsTopic, paymentEvent('PAYMENT_REFUNDED', orders[0]!.orderId));
    await until(orders[0]!.couponId, 'ISSUED');
    expect(await counts(policyId)).toEqual({ read: { issued: STOCK, used: 4 }, rows: { issued: STOCK, used: 4 } });

    // A reservation times out (RESERVED -> ISSUED): nothing used changes, nothing issued either.
    const pending = orders[5]!;
    await db().query("UPDATE reservations SET expires_at = now() - interval '1 second' WHERE coupon_id = $1 AND status = 'PENDING'", [
      pending.couponId,
    ]);
    await eventually(
      () => reservationsOf(pending.couponId),
      (rows) => rows.every((r) => r.status === 'EXPIRED'),
      15_000,
      'reservation expired',
    );
    expect((await couponRow(pending.couponId))?.status).toBe('ISSUED');
    expect(await counts(policyId)).toEqual({ read: { issued: STOCK, used: 4 }, rows: { issued: STOCK, used: 4 } });
  });
});
