// Statistics of policies, users and the whole service: counts from Postgres, issue rejections from
// the counters the workers keep in Redis (src/observability/rejection-stats.ts). Every number of one answer
// is taken at the same instant `asOf` (the web's clock, as the API's AVAILABLE/EXPIRED status is).
//
// Cost: a policy's counts read each of its coupons once (its rows through uq_coupons_policy_slot;
// status is deliberately in no index, so checkout updates stay HOT); the service totals read the
// whole coupons table once. The web caches every answer (src/storage/cache/stats-cache.ts).
import type { Redis } from 'ioredis';
import { QueryTypes, type Sequelize } from 'sequelize';
import { z } from 'zod';
import { redisKeys } from '../core/redis-keys';

const MINUTE_MS = 60_000;
const SERIES_MINUTES = 60;
export const EXPIRING_SOON_DAYS = 7;

// The answers' shapes: the routes' types and the API reference (src/web/openapi.ts) come from these.
const count = z.number().int().min(0);
const isoTime = z.string().describe('ISO-8601 UTC');

export const statusCountsSchema = z.object({
  issued: count.describe('Every coupon ever issued (rows in coupons), whatever became of it'),
  available: count.describe('ISSUED and not expired: what the API shows as AVAILABLE'),
  reserved: count.describe('RESERVED: held by a PENDING reservation'),
  used: count.describe('USED (a refunded coupon the policy restores counts as available again)'),
  expired: count.describe('EXPIRED, or ISSUED past its expiresAt (shown as EXPIRED)'),
});
export type StatusCounts = z.infer<typeof statusCountsSchema>;

export const rejectionsSchema = z
  .object({ total: count, byReason: z.record(z.string(), count).describe('e.g. {"SOLD_OUT": 850, "USER_LIMIT_REACHED": 12}') })
  .nullable()
  .describe('Issue requests answered rejected, by reason; null while Redis does not answer');
export type Rejections = NonNullable<z.infer<typeof rejectionsSchema>>;

const useRate = z.number().min(0).max(1).nullable().describe('used / issued; null before the first coupon');
const remaining = z.number().int().min(0).nullable().describe('totalQuantity - issued; null for an unlimited policy');

export const policyStatsSchema = statusCountsSchema.extend({
  policyId: z.string(),
  name: z.string(),
  status: z.string(),
  issueMethod: z.string(),
  asOf: isoTime.describe('The instant every number of the answer was taken at'),
  totalQuantity: z.number().int().nullable(),
  remaining,
  useRate,
  rejected: rejectionsSchema,
  paymentConflicts: count.describe("Payment events recorded as a CONFLICT for a reservation of this policy's coupons"),
  issuedPerMinute: z
    .array(z.object({ minute: isoTime, count }))
    .describe('Coupons issued in each of the last 60 minutes, oldest first, the current (partial) minute last; zeros included'),
  issueToUse: z
    .object({
      count: count.describe('Coupons now USED'),
      avgSeconds: z.number().nullable(),
      p50Seconds: z.number().nullable(),
      p95Seconds: z.number().nullable(),
    })
    .describe('Seconds from issuedAt to usedAt over the coupons now USED; null figures while there are none'),
});
export type PolicyStats = z.infer<typeof policyStatsSchema>;

export const BUSIEST_WINDOWS = ['5m', '1h'] as const;
export type BusiestWindow = (typeof BUSIEST_WINDOWS)[number];

export const busyPolicySchema = z.object({
  policyId: z.string(),
  name: z.string(),
  status: z.string(),
  totalQuantity: z.number().int().nullable(),
  issued: count,
  remaining,
  issuedLastHour: count,
  issuedLast5Minutes: count,
});
export type BusyPolicy = z.infer<typeof busyPolicySchema>;

export const overallStatsSchema = z.object({
  asOf: isoTime,
  policies: z.object({ total: count, active: count, paused: count, ended: count }),
  coupons: statusCountsSchema.extend({ useRate }),
  issuedLastHour: count,
  issuedLast5Minutes: count,
  rejected: rejectionsSchema.describe('Every issue rejection, also of requests that named no policy (CODE_NOT_FOUND, POLICY_NOT_FOUND)'),
  paymentConflicts: count,
  busiest: z.object({
    window: z.enum(BUSIEST_WINDOWS),
    policies: z.array(busyPolicySchema).describe('Policies with the most coupons issued in the window, busiest first (ties by id)'),
  }),
});
export type OverallStats = z.infer<typeof overallStatsSchema>;

export const userStatsSchema = statusCountsSchema.extend({
  userId: z.string(),
  asOf: isoTime,
  expiringWithin7Days: count.describe(`AVAILABLE coupons whose expiresAt falls within the next ${EXPIRING_SOON_DAYS} days`),
  nextExpiresAt: isoTime.nullable().describe("The soonest expiresAt of the user's AVAILABLE coupons"),
});
export type UserStats = z.infer<typeof userStatsSchema>;

type CountRow = Record<'issued' | 'available' | 'reserved' | 'used' | 'expired', string | number>;

// $now is the instant of the answer. Casts keep the parameter types fixed for the planner.
const STATUS_COUNTS = `
  count(*) AS issued,
  count(*) FILTER (WHERE status = 'ISSUED' AND expires_at > $now) AS available,
  count(*) FILTER (WHERE status = 'RESERVED') AS reserved,
  count(*) FILTER (WHERE status = 'USED') AS used,
  count(*) FILTER (WHERE status = 'EXPIRED' OR (status = 'ISSUED' AND expires_at <= $now)) AS expired`;

function statusCounts(row: CountRow | undefined): StatusCounts {
  return {
    issued: Number(row?.issued ?? 0),
    available: Number(row?.available ?? 0),
    reserved: Number(row?.reserved ?? 0),
    used: Number(row?.used ?? 0),
    expired: Number(row?.expired ?? 0),
  };
}

const rate = (used: number, issued: number) => (issued === 0 ? null : used / issued);
const seconds = (v: unknown) => (v === null || v === undefined ? null : Math.round(Number(v) * 1000) / 1000);

function select<T extends object>(db: Sequelize, sql: string, bind: Record<string, unknown>): Promise<T[]> {
  return db.query<T>(sql, { bind, type: QueryTypes.SELECT });
}

/** A rejection hash as numbers; null when Redis does not answer (the rest of the stats still do). */
export async function readRejections(redis: Redis | null, key: string): Promise<Rejections | null> {
  if (!redis) return null;
  try {
    const hash = await redis.hgetall(key);
    const byReason = Object.fromEntries(Object.entries(hash).map(([code, n]) => [code, Number(n)]));
    return { total: Object.values(byReason).reduce((a, b) => a + b, 0), byReason };
  } catch {
    return null;
  }
}

/** The minute buckets of the hour ending at `now`, oldest first, filled from `counts` (epoch ms of a minute -> coupons). */
function minuteSeries(now: Date, counts: Map<number, number>): { minute: string; count: number }[] {
  const current = Math.floor(now.getTime() / MINUTE_MS) * MINUTE_MS;
  return Array.from({ length: SERIES_MINUTES }, (_, i) => {
    const minute = current - (SERIES_MINUTES - 1 - i) * MINUTE_MS;
    return { minute: new Date(minute).toISOString(), count: counts.get(minute) ?? 0 };
  });
}

/** One policy's statistics, or null when there is no such policy. */
export async function policyStats(db: Sequelize, redis: Redis | null, policyId: string, now = new Date()): Promise<PolicyStats | null> {
  const bind = { id: policyId, now: now.toISOString() };
  const [policies, counts, minutes, conflicts, rejected] = await Promise.all([
    select<{ name: string; status: string; issue_method: string; total_quantity: number | null }>(
      db,
      'SELECT name, status, issue_method, total_quantity FROM coupon_policies WHERE id = $id',
      { id: policyId },
    ),
    select<CountRow & { use_count: string; use_avg: number | null; use_pct: (number | string)[] | null }>(
      db,
      `SELECT ${STATUS_COUNTS},
              count(used_at) FILTER (WHERE status = 'USED') AS use_count,
              avg(extract(epoch FROM used_at - issued_at)) FILTER (WHERE status = 'USED') AS use_avg,
              percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY extract(epoch FROM used_at - issued_at))
                FILTER (WHERE status = 'USED') AS use_pct
         FROM coupons WHERE policy_id = $id`,
      bind,
    ),
    // The policy's rows once more, the same pages as above. An index on (policy_id, issued_at)
    // would cost every issued coupon an index entry to save ~30 ms here (docs/ARCHITECTURE.md).
    select<{ minute: string; n: string }>(
      db,
      `SELECT extract(epoch FROM date_trunc('minute', issued_at)) * 1000 AS minute, count(*) AS n
         FROM coupons
        WHERE policy_id = $id AND issued_at >= date_trunc('minute', $now::timestamptz) - interval '59 minutes' AND issued_at <= $now
        GROUP BY date_trunc('minute', issued_at)`,
      bind,
    ),
    // Conflicts are rare: the partial index holds only them; each is joined to its coupon by key.
    select<{ n: string }>(
      db,
      `SELECT count(*) AS n FROM processed_events pe
         JOIN reservations r ON r.id = pe.reservation_id
         JOIN coupons c ON c.id = r.coupon_id
        WHERE pe.outcome = 'CONFLICT' AND c.policy_id = $id`,
      { id: policyId },
    ),
    readRejections(redis, redisKeys().policyRejections(policyId)),
  ]);
  const policy = policies[0];
  if (!policy) return null;
  const row = counts[0];
  const c = statusCounts(row);
  const totalQuantity = policy.total_quantity === null ? null : Number(policy.total_quantity);
  return {
    policyId,
    name: policy.name,
    status: policy.status,
    issueMethod: policy.issue_method,
    asOf: now.toISOString(),
    totalQuantity,
    ...c,
    remaining: totalQuantity === null ? null : Math.max(0, totalQuantity - c.issued),
    useRate: rate(c.used, c.issued),
    rejected,
    paymentConflicts: Number(conflicts[0]?.n ?? 0),
    issuedPerMinute: minuteSeries(now, new Map(minutes.map((m) => [Number(m.minute), Number(m.n)]))),
    issueToUse: {
      count: Number(row?.use_count ?? 0),
      avgSeconds: seconds(row?.use_avg),
      p50Seconds: seconds(row?.use_pct?.[0]),
      p95Seconds: seconds(row?.use_pct?.[1]),
    },
  };
}

/**
 * Totals of the whole service and its busiest policies, from one pass over the coupons table
 * grouped by policy: the totals are the sums of the groups, the busiest the top of them.
 */
export async function overallStats(
  db: Sequelize,
  redis: Redis | null,
  opts: { top: number; window: BusiestWindow },
  now = new Date(),
): Promise<OverallStats> {
  const bind = { now: now.toISOString() };
  const [perPolicy, conflicts, rejected] = await Promise.all([
    select<CountRow & { id: string; name: string; status: string; total_quantity: number | null; last_hour: string; last_5m: string }>(
      db,
      `SELECT p.id, p.name, p.status, p.total_quantity, c.issued, c.available, c.reserved, c.used, c.expired, c.last_hour, c.last_5m
         FROM coupon_policies p
         LEFT JOIN (
           SELECT policy_id, ${STATUS_COUNTS},
                  count(*) FILTER (WHERE issued_at > $now::timestamptz - interval '1 hour' AND issued_at <= $now) AS last_hour,
                  count(*) FILTER (WHERE issued_at > $now::timestamptz - interval '5 minutes' AND issued_at <= $now) AS last_5m
             FROM coupons GROUP BY policy_id
         ) c ON c.policy_id = p.id`,
      bind,
    ),
    select<{ n: string }>(db, "SELECT count(*) AS n FROM processed_events WHERE outcome = 'CONFLICT'", {}),
    readRejections(redis, redisKeys().allRejections()),
  ]);
  const totals: StatusCounts = { issued: 0, available: 0, reserved: 0, used: 0, expired: 0 };
  const policies = { total: perPolicy.length, active: 0, paused: 0, ended: 0 };
  let issuedLastHour = 0;
  let issuedLast5Minutes = 0;
  const busy: BusyPolicy[] = [];
  for (const p of perPolicy) {
    const c = statusCounts(p);
    for (const k of Object.keys(totals) as (keyof StatusCounts)[]) totals[k] += c[k];
    if (p.status === 'ACTIVE') policies.active += 1;
    else if (p.status === 'PAUSED') policies.paused += 1;
    else if (p.status === 'ENDED') policies.ended += 1;
    const lastHour = Number(p.last_hour ?? 0);
    const last5 = Number(p.last_5m ?? 0);
    issuedLastHour += lastHour;
    issuedLast5Minutes += last5;
    const totalQuantity = p.total_quantity === null ? null : Number(p.total_quantity);
    busy.push({
      policyId: p.id,
      name: p.name,
      status: p.status,
      totalQuantity,
      issued: c.issued,
      remaining: totalQuantity === null ? null : Math.max(0, totalQuantity - c.issued),
      issuedLastHour: lastHour,
      issuedLast5Minutes: last5,
    });
  }
  const inWindow = (p: BusyPolicy) => (opts.window === '5m' ? p.issuedLast5Minutes : p.issuedLastHour);
  const busiest = busy
    .filter((p) => inWindow(p) > 0)
    .sort((a, b) => inWindow(b) - inWindow(a) || (a.policyId < b.policyId ? -1 : 1))
    .slice(0, opts.top);
  return {
    asOf: now.toISOString(),
    policies,
    coupons: { ...totals, useRate: rate(totals.used, totals.issued) },
    issuedLastHour,
    issuedLast5Minutes,
    rejected,
    paymentConflicts: Number(conflicts[0]?.n ?? 0),
    busiest: { window: opts.window, policies: busiest },
  };
}

/** A user's coupons by status (through ix_coupons_user_issued), and what expires soon. */
export async function userStats(db: Sequelize, userId: string, now = new Date()): Promise<UserStats> {
  const [row] = await select<CountRow & { soon: string; next_expiry: Date | string | null }>(
    db,
    `SELECT ${STATUS_COUNTS},
            count(*) FILTER (WHERE status = 'ISSUED' AND expires_at > $now AND expires_at <= $now::timestamptz + interval '${EXPIRING_SOON_DAYS} days') AS soon,
            min(expires_at) FILTER (WHERE status = 'ISSUED' AND expires_at > $now) AS next_expiry
       FROM coupons WHERE user_id = $id`,
    { id: userId, now: now.toISOString() },
  );
  return {
    userId,
    asOf: now.toISOString(),
    ...statusCounts(row),
    expiringWithin7Days: Number(row?.soon ?? 0),
    nextExpiresAt: row?.next_expiry ? new Date(row.next_expiry).toISOString() : null,
  };
}
