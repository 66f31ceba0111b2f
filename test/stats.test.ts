// Live statistics against the real processes (web, two workers, the Kafka bridge): after a
// concurrent sale, reservations, payments, cancellations, a refund and a payment conflict, every
// number of the stats routes equals what Postgres holds and what the test itself saw.
import { randomUUID } from 'node:crypto';
import IORedis from 'ioredis';
import { Pool } from 'pg';
import { overallStatsSchema, policyStatsSchema, userStatsSchema } from '../src/storage/stats';
import { createStatsCache } from '../src/storage/cache/stats-cache';
import { redisKeysUnder, statsAnswers } from '../src/core/redis-keys';
import { eventually, EventProducer, paymentEvent, reserve } from './support/checkout';
import { freshDatabase } from './support/db';
import { createPolicy as createPolicyVia, uniqueId } from './support/fixtures';
import { Api, mapLimit } from './support/http';
import { startStack, type Stack } from './support/stack';
import { adminToken, tokenFor } from './support/tokens';

let stack: Stack;
let api: Api;
let admin: string;
let pg: Pool;
const events = new EventProducer();

beforeAll(async () => {
  // A database of its own: the service totals of GET /stats must be this test's rows alone.
  const url = await freshDatabase(`${new URL(process.env.DATABASE_URL as string).pathname.slice(1)}_stats_alone`);
  pg = new Pool({ connectionString: url, max: 4 });
  stack = await startStack({ workers: 2, bridge: true, name: 'stats', env: { DATABASE_URL: url } });
  api = new Api(stack.baseUrl, 256);
  admin = await adminToken();
});

afterAll(async () => {
  await events.close();
  await api?.close();
  await stack?.stop();
  await pg?.end();
});

interface CouponRow {
  id: string;
  user_id: string;
  status: string;
  issued_at: Date;
  expires_at: Date;
  used_at: Date | null;
}

const rowsOf = async (where: string, value: string) =>
  (await pg.query<CouponRow>(`SELECT id, user_id, status, issued_at, expires_at, used_at FROM coupons WHERE ${where} = $1`, [value])).rows;

/** The API's counts, computed here from the rows with the documented definitions. */
function countsOf(rows: CouponRow[], asOf: Date) {
  const live = (r: CouponRow) => r.status === 'ISSUED' && r.expires_at > asOf;
  return {
    issued: rows.length,
    available: rows.filter(live).length,
    reserved: rows.filter((r) => r.status === 'RESERVED').length,
    used: rows.filter((r) => r.status === 'USED').length,
    expired: rows.filter((r) => r.status === 'EXPIRED' || (r.status === 'ISSUED' && !live(r))).length,
  };
}

/** percentile_cont: linear interpolation between the closest ranks. */
function percentile(sorted: number[], p: number): number {
  const at = p * (sorted.length - 1);
  const lo = Math.floor(at);
  const hi = Math.ceil(at);
  return (sorted[lo] as number) + ((sorted[hi] as number) - (sorted[lo] as number)) * (at - lo);
}

/** A stats answer computed after `after` (answers are cached for about a second). */
async function statsAfter(path: string, after: number) {
  return eventually(
    () => api.get(path, admin),
    (r) => r.status === 200 && Date.parse(r.body.asOf) > after,
    15_000,
    `${path} computed after the settle`,
  ).then((r) => r.body);
}

/** One send for many events (keyed by order, as the payment system keys them). */
const publish = (list: { orderId: string }[]) =>
  events.send(
    stack.paymentsTopic,
    list.map((e) => ({ key: e.orderId, value: JSON.stringify(e) })),
  );

const createPolicy = (overrides: Record<string, unknown>) => createPolicyVia(api, overrides);

/** A winner of the sale: its user, token and coupon. */
interface Holder {
  user: string;
  token: string;
  couponId: string;
}

/** A holder with its reservation. */
type Reserved = Holder & { orderId: string; reservationId: string };

/** Refusals by reason code. */
type ByReason = Record<string, number>;

/** The sale: 400 users ask twice each, all at once, for 150 coupons. The winners, and the refusals by reason. */
async function concurrentSale(saleId: string): Promise<{ holders: Holder[]; rejectedSeen: ByReason }> {
  const users = Array.from({ length: 400 }, (_, i) => uniqueId(`st${i}`));
  const tokens = new Map(await Promise.all(users.map(async (u) => [u, await tokenFor(u)] as const)));
  const accepted = await Promise.all(
    users.flatMap((user) =>
      [0, 1].map(async () => ({ user, reply: await api.post('/api/v1/coupons/issue', tokens.get(user), { policyId: saleId }) })),
    ),
  );
  expect(accepted.map((a) => a.reply.status)).toEqual(Array(800).fill(202));
  const jobs = await mapLimit(accepted, 128, async ({ user, reply }) => ({
    user,
    job: await api.settle(reply.body.jobId, tokens.get(user) as string),
  }));
  const winners = jobs.filter((j) => j.job.status === 'succeeded');
  expect(winners).toHaveLength(150);
  const rejectedSeen: ByReason = {};
  for (const { job } of jobs.filter((j) => j.job.status === 'rejected'))
    rejectedSeen[job.reason.code] = (rejectedSeen[job.reason.code] ?? 0) + 1;
  expect(Object.keys(rejectedSeen).sort()).toEqual(expect.arrayContaining(['SOLD_OUT']));
  expect((rejectedSeen.SOLD_OUT ?? 0) + (rejectedSeen.USER_LIMIT_REACHED ?? 0)).toBe(650);
  expect(rejectedSeen.SOLD_OUT).toBe(800 - 150 - (rejectedSeen.USER_LIMIT_REACHED ?? 0));
  const holders = winners.map((w) => ({ user: w.user, token: tokens.get(w.user) as string, couponId: w.job.result.id as string }));
  return { holders, rejectedSeen };
}

/** Rejections that name no existing policy count only in the service totals: the policy id asked for. */
async function refusalsOfNoPolicy(): Promise<string> {
  const bogusPolicy = `no-such-${randomUUID()}`;
  const lost = await api.post('/api/v1/coupons/issue', admin, { policyId: bogusPolicy });
  expect((await api.settle(lost.body.jobId, admin)).reason.code).toBe('POLICY_NOT_FOUND');
  const wrongCode = await api.post('/api/v1/coupons/issue', admin, { code: 'NO-SUCH-CODE-1' });
  expect((await api.settle(wrongCode.body.jobId, admin)).reason.code).toBe('CODE_NOT_FOUND');
  return bogusPolicy;
}

/** How many of the payment events `ids` the bridge has applied. */
const processedPayments = (ids: string[]) =>
  pg
    .query<{ n: string }>("SELECT count(*) AS n FROM processed_events WHERE source = 'payments' AND event_id = ANY($1)", [ids])
    .then((r) => Number(r.rows[0]?.n));

/**
 * Checkout: 60 of the winners reserve, all at once; 30 pay, 10 cancel, 5 fail their payment, and
 * reservations 45..59 stay PENDING. The ones that paid, and the ones that cancelled.
 */
async function checkOut(holders: Holder[]): Promise<{ paid: Reserved[]; cancelled: Reserved[] }> {
  const reservations = await Promise.all(
    holders.slice(0, 60).map(async (h) => {
      const orderId = uniqueId('order');
      const reply = await reserve(api, h.token, { couponId: h.couponId, orderId, orderAmount: 50_000 });
      expect(reply.status).toBe(202);
      const job = await api.settle(reply.body.jobId, h.token);
      expect(job.status).toBe('succeeded');
      return { ...h, orderId, reservationId: job.result.reservationId as string };
    }),
  );
  const [paid, cancelled, failed] = [reservations.slice(0, 30), reservations.slice(30, 40), reservations.slice(40, 45)];
  const payEvents = paid.map((r) => paymentEvent('PAYMENT_COMPLETED', r.orderId, { reservationId: r.reservationId }));
  const failEvents = failed.map((r) => paymentEvent('PAYMENT_FAILED', r.orderId, { reservationId: r.reservationId }));
  await publish([...payEvents, ...failEvents]);
  await Promise.all(
    cancelled.map(async (r) => {
      const reply = await api.post(`/api/v1/coupons/reservations/${r.reservationId}/cancel`, r.token);
      expect(reply.status).toBe(202);
      expect((await api.settle(reply.body.jobId, r.token)).status).toBe('succeeded');
    }),
  );
  await eventually(
    () => processedPayments([...payEvents, ...failEvents].map((e) => e.eventId)),
    (n) => n === 35,
    60_000,
    'payments and failures applied',
  );
  return { paid, cancelled };
}

/**
 * Two refunds of used coupons (the policy restores them), and a conflict: the first cancelled
 * coupon is reserved for another order, then the payment of its first order arrives.
 */
async function refundAndConflict(paid: Reserved[], cancelled: Reserved[]): Promise<void> {
  const refunds = paid.slice(0, 2).map((r) => paymentEvent('PAYMENT_REFUNDED', r.orderId, { reservationId: r.reservationId }));
  const again = cancelled[0] as Reserved;
  const second = await reserve(api, again.token, { couponId: again.couponId, orderId: uniqueId('order'), orderAmount: 50_000 });
  expect((await api.settle(second.body.jobId, again.token)).status).toBe('succeeded');
  const late = paymentEvent('PAYMENT_COMPLETED', again.orderId, { reservationId: again.reservationId });
  await publish([...refunds, late]);
  await eventually(
    () => processedPayments([...refunds, late].map((e) => e.eventId)),
    (n) => n === 3,
    60_000,
    'refunds and the late payment applied',
  );
  const conflict = await pg.query('SELECT outcome FROM processed_events WHERE event_id = $1', [late.eventId]);
  expect(conflict.rows[0]?.outcome).toBe('CONFLICT');
}

/** Five untouched coupons expire; one untouched winner also downloads three long-lived coupons: that collector. */
async function expireAndCollect(holders: Holder[], downloadId: string): Promise<Holder> {
  const untouched = holders.slice(60);
  await pg.query("UPDATE coupons SET expires_at = now() - interval '1 second' WHERE id = ANY($1)", [
    untouched.slice(0, 5).map((h) => h.couponId),
  ]);
  const collector = untouched[10] as Holder;
  for (let i = 0; i < 3; i += 1) {
    const reply = await api.post('/api/v1/coupons/issue', collector.token, { policyId: downloadId });
    expect((await api.settle(reply.body.jobId, collector.token)).status).toBe('succeeded');
  }
  return collector;
}

/**
 * Every job has settled; the rejection counters trail a job's completion by one event-loop turn:
 * waits until Redis holds every refusal the test saw (the sale's, and the service's with the two
 * that named no policy).
 */
async function rejectionsCounted(saleId: string, rejectedSeen: ByReason): Promise<void> {
  const counters = new IORedis(process.env.REDIS_URL as string);
  try {
    const counted = async () => [
      await counters.hgetall(redisKeysUnder(stack.queuePrefix).policyRejections(saleId)),
      await counters.hgetall(redisKeysUnder(stack.queuePrefix).allRejections()),
    ];
    const all = { ...rejectedSeen, POLICY_NOT_FOUND: 1, CODE_NOT_FOUND: 1 };
    const same = (hash: Record<string, string> | undefined, byReason: ByReason) =>
      Object.keys(hash ?? {}).length === Object.keys(byReason).length &&
      Object.entries(byReason).every(([code, n]) => Number(hash?.[code]) === n);
    await eventually(counted, ([sale, service]) => same(sale, rejectedSeen) && same(service, all), 15_000, 'every rejection counted');
  } finally {
    counters.disconnect();
  }
}

/** The sale policy's statistics, computed after `settled`, equal its rows and what the test saw. */
async function expectSaleStats(saleId: string, settled: number, rejectedSeen: ByReason): Promise<void> {
  const stats = await statsAfter(`/api/v1/coupons/policies/${saleId}/stats`, settled);
  const asOf = new Date(stats.asOf);
  const rows = await rowsOf('policy_id', saleId);
  const expected = { issued: 150, available: 150 - 28 - 16 - 5, reserved: 15 + 1, used: 30 - 2, expired: 5 };
  expect(countsOf(rows, asOf)).toEqual(expected);
  expect(stats).toMatchObject({
    policyId: saleId,
    status: 'ACTIVE',
    issueMethod: 'FIRST_COME',
    totalQuantity: 150,
    remaining: 0,
    ...expected,
  });
  expect(stats.useRate).toBeCloseTo(28 / 150, 10);
  expect(stats.rejected).toEqual({ total: 650, byReason: rejectedSeen });
  const conflicts = await pg.query<{ n: string }>(
    `SELECT count(*) AS n FROM processed_events pe JOIN reservations r ON r.id = pe.reservation_id JOIN coupons c ON c.id = r.coupon_id
      WHERE pe.outcome = 'CONFLICT' AND c.policy_id = $1`,
    [saleId],
  );
  expect(stats.paymentConflicts).toBe(1);
  expect(Number(conflicts.rows[0]?.n)).toBe(1);
  expectIssuedPerMinute(stats, rows, asOf);
  expectIssueToUse(stats, rows);
  // The answer has the documented shape (the OpenAPI document is generated from it).
  expect(policyStatsSchema.strict().safeParse(stats).error).toBeUndefined();
}

/** Issued per minute: 60 buckets ending with the current minute, equal to the rows bucketed here. */
function expectIssuedPerMinute(stats: any, rows: CouponRow[], asOf: Date): void {
  const currentMinute = Math.floor(asOf.getTime() / 60_000) * 60_000;
  const perMinute = new Map<number, number>();
  for (const r of rows) {
    const m = Math.floor(r.issued_at.getTime() / 60_000) * 60_000;
    perMinute.set(m, (perMinute.get(m) ?? 0) + 1);
  }
  expect(stats.issuedPerMinute).toEqual(
    Array.from({ length: 60 }, (_, i) => {
      const m = currentMinute - (59 - i) * 60_000;
      return { minute: new Date(m).toISOString(), count: perMinute.get(m) ?? 0 };
    }),
  );
  expect(stats.issuedPerMinute.reduce((sum: number, b: { count: number }) => sum + b.count, 0)).toBe(150);
}

/** Time from issue to use, over the coupons now USED. */
function expectIssueToUse(stats: any, rows: CouponRow[]): void {
  const useSeconds = rows
    .filter((r) => r.status === 'USED')
    .map((r) => ((r.used_at as Date).getTime() - r.issued_at.getTime()) / 1000)
    .sort((a, b) => a - b);
  expect(stats.issueToUse.count).toBe(28);
  expect(stats.issueToUse.avgSeconds).toBeCloseTo(useSeconds.reduce((a, b) => a + b, 0) / useSeconds.length, 2);
  expect(stats.issueToUse.p50Seconds).toBeCloseTo(percentile(useSeconds, 0.5), 2);
  expect(stats.issueToUse.p95Seconds).toBeCloseTo(percentile(useSeconds, 0.95), 2);
  expect(stats.issueToUse.p95Seconds).toBeGreaterThanOrEqual(stats.issueToUse.p50Seconds);
}

/** The unlimited policy: no remaining, no rejections, nothing used yet. */
async function expectDownloadStats(downloadId: string, settled: number): Promise<void> {
  const download = await statsAfter(`/api/v1/coupons/policies/${downloadId}/stats`, settled);
  expect(download).toMatchObject({
    totalQuantity: null,
    remaining: null,
    issued: 3,
    available: 3,
    used: 0,
    useRate: 0,
    rejected: { total: 0, byReason: {} },
    issueToUse: { count: 0, avgSeconds: null, p50Seconds: null, p95Seconds: null },
  });
}

/** Service totals and the busiest policies; the policy id that named nothing left no counter in Redis. */
async function expectServiceStats(
  policies: { saleId: string; downloadId: string; bogusPolicy: string },
  settled: number,
  rejectedSeen: ByReason,
): Promise<void> {
  const { saleId, downloadId, bogusPolicy } = policies;
  const all = await statsAfter('/api/v1/stats?top=5', settled);
  const allRows = (await pg.query<CouponRow>('SELECT id, user_id, status, issued_at, expires_at, used_at FROM coupons')).rows;
  const allAsOf = new Date(all.asOf);
  expect(all.coupons).toMatchObject(countsOf(allRows, allAsOf));
  expect(all.coupons).toMatchObject({ issued: 153, used: 28, reserved: 16, expired: 5, available: 104 });
  expect(all.coupons.useRate).toBeCloseTo(28 / 153, 10);
  expect(all.policies).toEqual({ total: 2, active: 2, paused: 0, ended: 0 });
  expect(all.issuedLastHour).toBe(allRows.filter((r) => r.issued_at.getTime() > allAsOf.getTime() - 3_600_000).length);
  expect(all.issuedLastHour).toBe(153);
  expect(all.issuedLast5Minutes).toBe(allRows.filter((r) => r.issued_at.getTime() > allAsOf.getTime() - 300_000).length);
  expect(all.paymentConflicts).toBe(1);
  expect(all.rejected).toEqual({ total: 652, byReason: { ...rejectedSeen, POLICY_NOT_FOUND: 1, CODE_NOT_FOUND: 1 } });
  expect(all.busiest.window).toBe('1h');
  expect(all.busiest.policies.map((p: { policyId: string; issuedLastHour: number }) => [p.policyId, p.issuedLastHour])).toEqual([
    [saleId, 150],
    [downloadId, 3],
  ]);
  expect(all.busiest.policies[0]).toMatchObject({ issued: 150, remaining: 0, totalQuantity: 150 });
  expect(overallStatsSchema.strict().safeParse(all).error).toBeUndefined();
  // A client-chosen policy id that names nothing leaves no counter behind in Redis.
  const redis = new IORedis(process.env.REDIS_URL as string);
  try {
    expect(await redis.exists(redisKeysUnder(stack.queuePrefix).policyRejections(bogusPolicy))).toBe(0);
  } finally {
    redis.disconnect();
  }
}

/** A user's statistics: the collector holds a 7-day sale coupon and three 30-day ones; a payer used its one. */
async function expectUserStats(collector: Holder, payer: Holder, settled: number): Promise<void> {
  const mine = await eventually(
    () => api.get(`/api/v1/coupons/users/${collector.user}/stats`, collector.token),
    (r) => r.status === 200 && Date.parse(r.body.asOf) > settled,
    15_000,
  ).then((r) => r.body);
  const myRows = await rowsOf('user_id', collector.user);
  expect(countsOf(myRows, new Date(mine.asOf))).toMatchObject({ issued: 4, available: 4 });
  expect(mine).toMatchObject({
    userId: collector.user,
    issued: 4,
    available: 4,
    reserved: 0,
    used: 0,
    expired: 0,
    expiringWithin7Days: 1,
  });
  expect(userStatsSchema.strict().safeParse(mine).error).toBeUndefined();
  expect(mine.nextExpiresAt).toBe(
    myRows
      .map((r) => r.expires_at)
      .sort((a, b) => a.getTime() - b.getTime())[0]
      ?.toISOString(),
  );
  const payerStats = await statsAfter(`/api/v1/coupons/users/${payer.user}/stats`, settled);
  expect(payerStats).toMatchObject({ issued: 1, used: 1, available: 0, expiringWithin7Days: 0, nextExpiresAt: null });
}

describe('statistics', () => {
  it('Stats equal the database after a concurrent sale with reservations and payments', async () => {
    const started = Date.now();
    const saleId = await createPolicy({ totalQuantity: 150, perUserLimit: 1 });
    const downloadId = await createPolicy({ issueMethod: 'DOWNLOAD', totalQuantity: null, perUserLimit: 10, validity: { days: 30 } });
    const { holders, rejectedSeen } = await concurrentSale(saleId);
    const bogusPolicy = await refusalsOfNoPolicy();
    const { paid, cancelled } = await checkOut(holders);
    await refundAndConflict(paid, cancelled);
    const collector = await expireAndCollect(holders, downloadId);
    await rejectionsCounted(saleId, rejectedSeen);
    // Every answer below is computed after this moment.
    const settled = Date.now();
    await expectSaleStats(saleId, settled, rejectedSeen);
    await expectDownloadStats(downloadId, settled);
    await expectServiceStats({ saleId, downloadId, bogusPolicy }, settled, rejectedSeen);
    await expectUserStats(collector, paid[5] as Reserved, settled);
    console.log(`stats test: sale, checkout and stats in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  });

  it('serves a cached answer for about a second, and the stats route is not the policy route', async () => {
    const id = await createPolicy({ totalQuantity: 10 });
    // An answer is stored fresh for at least STATS_CACHE_MS (1 s) from when it was computed.
    const first = (await api.get(`/api/v1/coupons/policies/${id}/stats`, admin)).body;
    const cached = new IORedis(process.env.REDIS_URL as string);
    const key = redisKeysUnder(stack.queuePrefix).statsAnswer(statsAnswers.policy(id));
    const setFreshUntil = async (at: number) => {
      const entry = JSON.parse((await cached.get(key)) as string) as { freshUntil: number };
      await cached.set(key, JSON.stringify({ ...entry, freshUntil: at }), 'PX', 60_000);
    };
    try {
      expect((JSON.parse((await cached.get(key)) as string) as { freshUntil: number }).freshUntil).toBeGreaterThanOrEqual(
        Date.parse(first.asOf) + 1_000,
      );
      // While it is fresh (made to last an hour, whatever the machine's pace), the same answer again,
      // though a coupon is issued meanwhile.
      await setFreshUntil(Date.now() + 3_600_000);
      const shopper = uniqueId('cache');
      const token = await tokenFor(shopper);
      const reply = await api.post('/api/v1/coupons/issue', token, { policyId: id });
      expect((await api.settle(reply.body.jobId, token)).status).toBe('succeeded');
      expect((await api.get(`/api/v1/coupons/policies/${id}/stats`, admin)).body).toEqual(first);
      // Once it is stale, the issue shows in the recomputed answer.
      await setFreshUntil(Date.now() - 1);
    } finally {
      cached.disconnect();
    }
    const later = await statsAfter(`/api/v1/coupons/policies/${id}/stats`, Date.parse(first.asOf));
    expect(later).toMatchObject({ issued: 1, remaining: 9, available: 1 });

    const policy = await api.get(`/api/v1/coupons/policies/${id}`, admin);
    expect(policy.body).toMatchObject({ id, issuedCount: 1 });
    expect(policy.body.issuedPerMinute).toBeUndefined();
    expect(first.issuedPerMinute).toHaveLength(60);
  });

  it('lets only admins read policy and service stats, and users only their own', async () => {
    const id = await createPolicy({ totalQuantity: 5 });
    const alice = uniqueId('alice');
    const aliceToken = await tokenFor(alice);
    expect((await api.get(`/api/v1/coupons/policies/${id}/stats`, aliceToken)).status).toBe(403);
    expect((await api.get('/api/v1/stats', aliceToken)).status).toBe(403);
    expect((await api.get(`/api/v1/coupons/policies/${id}/stats`)).status).toBe(401);
    const unknown = await api.get(`/api/v1/coupons/policies/no-such-policy-${randomUUID()}/stats`, admin);
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.code).toBe('NOT_FOUND');
    expect((await api.get('/api/v1/coupons/policies/has%20space/stats', admin)).status).toBe(400);
    expect((await api.get('/api/v1/stats?top=0', admin)).status).toBe(400);
    expect((await api.get('/api/v1/stats?window=1d', admin)).status).toBe(400);
    expect((await api.get('/api/v1/stats?window=5m&top=1', admin)).body.busiest).toMatchObject({ window: '5m' });

    const own = await api.get(`/api/v1/coupons/users/${alice}/stats`, aliceToken);
    expect(own.status).toBe(200);
    expect(own.body).toMatchObject({ userId: alice, issued: 0, available: 0, expiringWithin7Days: 0, nextExpiresAt: null });
    expect((await api.get(`/api/v1/coupons/users/${uniqueId('bob')}/stats`, aliceToken)).status).toBe(403);
    expect((await api.get(`/api/v1/coupons/users/${alice}/stats`, admin)).status).toBe(200);
  });
});

describe('the stats cache', () => {
  let redis: IORedis;
  beforeAll(async () => {
    redis = new IORedis(process.env.REDIS_URL as string);
    await new Promise((resolve) => redis.once('ready', resolve));
  });
  afterAll(() => redis.disconnect());

  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it('computes once for concurrent readers, keeps a slow answer fresh ten times as long, and serves it stale while another process recomputes', async () => {
    const prefix = uniqueId('sc');
    const cache = createStatsCache(redis, { prefix, freshMs: 100 });
    const key = redisKeysUnder(prefix).statsAnswer('k');
    let runs = 0;
    let took = { from: 0, to: 0 };
    const slow = async () => {
      runs += 1;
      const from = Date.now();
      await sleep(100);
      took = { from, to: Date.now() };
      return { run: runs };
    };
    /** The stored answer's end of freshness; moving it stands in for the clock moving on. */
    const freshUntil = async () => (JSON.parse((await redis.get(key)) as string) as { freshUntil: number }).freshUntil;
    const setFreshUntil = async (at: number) => {
      const entry = JSON.parse((await redis.get(key)) as string) as { freshUntil: number };
      await redis.set(key, JSON.stringify({ ...entry, freshUntil: at }), 'PX', 60_000);
    };
    // Ten readers at once: one computation.
    expect(await Promise.all(Array.from({ length: 10 }, () => cache.read('k', slow)))).toEqual(Array(10).fill({ run: 1 }));
    // At least 100 ms to compute: fresh for ten times that from its end, not just the 100 ms floor.
    expect(await freshUntil()).toBeGreaterThanOrEqual(took.to + 10 * (took.to - took.from));
    // While fresh (an hour more of it, whatever the machine's pace), the answer is served as it is.
    await setFreshUntil(Date.now() + 3_600_000);
    expect(await cache.read('k', slow)).toEqual({ run: 1 });
    // Once stale, it is computed again.
    await setFreshUntil(Date.now() - 1);
    expect(await cache.read('k', slow)).toEqual({ run: 2 });
    // Stale, but another process holds the recomputation lock: the last answer, no computation.
    await setFreshUntil(Date.now() - 1);
    await redis.set(redisKeysUnder(prefix).statsAnswerLock('k'), 'someone-else', 'PX', 5_000);
    expect(await cache.read('k', slow)).toEqual({ run: 2 });
    expect(runs).toBe(2);
    // A cache of 0 ms is no cache.
    const none = createStatsCache(redis, { prefix, freshMs: 0 });
    expect(await none.read('k', slow)).toEqual({ run: 3 });
  });
});
