// Reservations nobody pays for end on their own (I6: by expiresAt + 5 s), also when no worker ran
// while they fell due, and a large backlog is worked off in batches.
import { randomUUID } from 'node:crypto';
import { couponRow, createCheckoutPolicy, eventually, reserve, shopperWith } from './support/checkout';
import { closeDb, db, freshDatabase } from './support/db';
import { Api } from './support/http';
import { readFile } from 'node:fs/promises';
import { logFile, logLinesWhen, startStack, stopProcess, type Stack } from './support/stack';

let stack: Stack;
let api: Api;
let policyId: string;

const TTL_SECONDS = 2;

// Its own database: the sweepers of other test files' workers would otherwise expire these rows too.
const sharedDatabaseUrl = process.env.DATABASE_URL;

beforeAll(async () => {
  process.env.DATABASE_URL = await freshDatabase('coupons_test_timeouts');
  stack = await startStack({
    workers: 1,
    name: 'timeouts',
    env: { RESERVATION_TTL_SECONDS: String(TTL_SECONDS), DATABASE_URL: process.env.DATABASE_URL },
  });
  api = new Api(stack.baseUrl, 64);
  policyId = await createCheckoutPolicy(api, { perUserLimit: 50 });
});

afterAll(async () => {
  await api?.close();
  await stack?.stop();
  await closeDb();
  process.env.DATABASE_URL = sharedDatabaseUrl;
});

interface Row {
  id: string;
  coupon_id: string;
  status: string;
  expires_at: Date;
  ended_at: Date | null;
  end_reason: string | null;
}

const rowsOf = async (ids: string[]) =>
  (await db().query<Row>('SELECT id, coupon_id, status, expires_at, ended_at, end_reason FROM reservations WHERE id = ANY($1)', [ids]))
    .rows;

/** Reserves every coupon of a fresh shopper at once; returns the reservation ids. */
async function reserveMany(count: number): Promise<string[]> {
  const shopper = await shopperWith(api, policyId, count);
  const replies = await Promise.all(
    shopper.coupons.map((couponId, i) => reserve(api, shopper.token, { couponId, orderId: `t-${i}-${randomUUID()}`, orderAmount: 20_000 })),
  );
  const jobs = await Promise.all(replies.map((r) => api.settle(r.body.jobId, shopper.token)));
  expect(jobs.map((j) => j.status)).toEqual(Array(count).fill('succeeded'));
  return jobs.map((j) => j.result.reservationId as string);
}

async function allExpired(ids: string[], timeoutMs: number): Promise<Row[]> {
  return eventually(
    () => rowsOf(ids),
    (rows) => rows.length === ids.length && rows.every((r) => r.status === 'EXPIRED'),
    timeoutMs,
    'all reservations expired',
  );
}

describe('reservation timeouts', () => {
  it('end every PENDING reservation within 5 s of its expiry and give the coupons back', async () => {
    const ids = await reserveMany(20);
    const rows = await allExpired(ids, (TTL_SECONDS + 10) * 1000);
    for (const row of rows) {
      expect(row.end_reason).toBe('TIMEOUT');
      // I6's own bound (the sweeper runs every second, so it has four seconds of slack), between two
      // times the service wrote (the expiry at reserve, the end in the sweep): none is the test's and
      // none includes a process's boot.
      const late = (row.ended_at as Date).getTime() - row.expires_at.getTime();
      expect(late).toBeGreaterThanOrEqual(0);
      expect(late).toBeLessThanOrEqual(5_000);
      expect(await couponRow(row.coupon_id)).toMatchObject({ status: 'ISSUED', reservation_id: null, order_id: null });
    }
  });

  it('catch up as soon as a worker starts again after every worker was down past the expiry', async () => {
    const ids = await reserveMany(20);
    for (const worker of stack.workers) await stopProcess(worker, 'SIGKILL');
    // Until Postgres's clock is past every expiry: nobody swept meanwhile, so they are overdue and still PENDING.
    const overdue = () =>
      db()
        .query<{ n: string }>('SELECT count(*) AS n FROM reservations WHERE id = ANY($1) AND expires_at < now()', [ids])
        .then((r) => Number(r.rows[0]?.n));
    await eventually(overdue, (n) => n === ids.length, (TTL_SECONDS + 30) * 1000, 'every reservation overdue');
    expect((await rowsOf(ids)).map((r) => r.status)).toEqual(Array(20).fill('PENDING'));

    // The new worker's first sweep, which it runs as it starts, ends them all: no boot time or
    // machine speed to budget for. (The earlier test's reservations are all ended: these are the only due ones.)
    await stack.startWorker();
    const rows = await allExpired(ids, 30_000);
    expect(rows.map((r) => r.end_reason)).toEqual(Array(20).fill('TIMEOUT'));
    const [firstSweep] = await logLinesWhen(`timeouts-worker-${stack.workers.length}`, (l) => l.msg === 'reservations expired');
    expect(firstSweep).toMatchObject({ expired: 20 });
  });

  it('work off a backlog of 2,500 overdue reservations in batches', async () => {
    for (const worker of stack.workers) await stopProcess(worker);
    const tag = randomUUID().slice(0, 8);
    // Written straight into Postgres: 2,500 users, each with one coupon reserved an hour ago.
    await db().query(
      `INSERT INTO coupons (id, policy_id, user_id, request_id, expires_at, status, order_id, reservation_id, reserved_at)
       SELECT 'bk-' || $2 || '-' || g, $1, 'bk-user-' || $2 || '-' || g, 'bk-req-' || $2 || '-' || g, now() + interval '7 days',
              'RESERVED', 'bk-order-' || $2 || '-' || g, 'bk-res-' || $2 || '-' || g, now() - interval '1 hour'
         FROM generate_series(1, 2500) g`,
      [policyId, tag],
    );
    await db().query(
      `INSERT INTO orders (order_id, user_id) SELECT 'bk-order-' || $1 || '-' || g, 'bk-user-' || $1 || '-' || g FROM generate_series(1, 2500) g`,
      [tag],
    );
    await db().query(
      `INSERT INTO reservations (id, coupon_id, user_id, order_id, order_amount, discount_amount, request_id, expires_at)
       SELECT 'bk-res-' || $1 || '-' || g, 'bk-' || $1 || '-' || g, 'bk-user-' || $1 || '-' || g, 'bk-order-' || $1 || '-' || g, 20000, 3000,
              'bk-rreq-' || $1 || '-' || g, now() - interval '50 minutes'
         FROM generate_series(1, 2500) g`,
      [tag],
    );
    await stack.startWorker();
    const pending = () =>
      db().query<{ n: string }>("SELECT count(*) AS n FROM reservations WHERE id LIKE $1 AND status = 'PENDING'", [`bk-res-${tag}-%`]);
    await eventually(pending, (r) => r.rows[0]?.n === '0', 60_000, 'backlog cleared');
    const { rows } = await db().query<{ n: string }>(
      "SELECT count(*) AS n FROM coupons WHERE id LIKE $1 AND status = 'ISSUED' AND reservation_id IS NULL",
      [`bk-${tag}-%`],
    );
    expect(rows[0]?.n).toBe('2500');
    // One pass of the new worker's sweeper went through the whole backlog, 100 at a time. Its line
    // comes after the pass's last, empty batch: the rows can all be EXPIRED a moment before it.
    const sweptTotal = async () =>
      (await readFile(logFile(`timeouts-worker-${stack.workers.length}`), 'utf8'))
        .split('\n')
        .filter((l) => l.includes('"reservations expired"'))
        .map((l) => JSON.parse(l) as { expired: number })
        .reduce((sum, l) => sum + l.expired, 0);
    const swept = await eventually(sweptTotal, (n) => n >= 2500, 10_000, 'the sweep logged');
    expect(swept).toBeGreaterThanOrEqual(2500);
  });
});
