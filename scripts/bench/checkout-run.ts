// One run of the checkout bench, in steps as a flash sale's: seed (a policy and one coupon per
// shopper, straight into Postgres: issuance is the flash-sale bench's subject), load (the open loop
// of checkout-load.ts), settle (every published payment applied), then the measurements and the audit
// (checkout-audit.ts). A measured run answers a CheckoutRun the report reads; the warm-up, only its
// invariants.
import type IORedis from 'ioredis';
import type { Client as PgClient } from 'pg';
import { checkpoint, fmtInt, note, percentile, redisUsedMemory, round, sleep } from './common';
import { classifier, startCpuPhase } from './cpu';
import { auditCheckouts, type Invariant } from './checkout-audit';
import { createUnlimitedPolicy, type Call } from './api';
import { drive, type Checkout, type EventPublisher } from './checkout-load';
import { judgeRun } from './checkout-bar';
import type { Stack } from './stack';

export interface CheckoutContext {
  stack: Stack;
  call: Call;
  sign: (sub: string, role: 'user' | 'admin') => Promise<string>;
  adminToken: string;
  publisher: EventPublisher;
  pg: PgClient;
  /** What a checkout leaves in Redis (INFO memory before the load and after the settle). */
  redis: IORedis;
  /** Checkouts started per second. */
  rate: number;
  settleTimeoutMs: number;
}

/** A policy and `count` coupons, one per shopper, with the shoppers' checkouts and tokens. */
async function prepare(ctx: CheckoutContext, label: string, count: number) {
  const policyId = await createUnlimitedPolicy(ctx.call, ctx.adminToken, `bench checkout ${label}`, {
    type: 'PERCENTAGE',
    value: 10,
    maxDiscountAmount: 5_000,
    minOrderAmount: 10_000,
  });
  const seedStarted = Date.now();
  // In slices: each row takes a per-user advisory lock, and one transaction holds only so many locks.
  for (let from = 1; from <= count; from += 2_000) {
    await ctx.pg.query(
      `INSERT INTO coupons (id, policy_id, user_id, request_id, expires_at)
       SELECT 'ck-' || $2 || '-' || g, $1, 'ck-' || $2 || '-u' || g, 'ck-' || $2 || '-r' || g, now() + interval '7 days'
         FROM generate_series($3::int, $4::int) g`,
      [policyId, label, from, Math.min(count, from + 1_999)],
    );
  }
  // Fresh statistics, as a live database has them: planned against a scratch database's empty
  // tables, the first checkouts' statements would not use the indexes they are meant for. And the
  // dead rows of the runs before vacuumed, as autovacuum (on by default, off on the development
  // machine) does: a checkout updates a coupon twice and the inbox deletes every row it writes, so
  // without it each run on one stack pays for the ones before it (a capacity search makes a dozen).
  await ctx.pg.query('VACUUM (ANALYZE) coupons, reservations, processed_events, orders, event_inbox');
  await checkpoint(ctx.pg); // and the seed's writes, and the runs' before, out of the way of the measured phase
  note(`seeded ${fmtInt(count)} coupons (${label}) in ${((Date.now() - seedStarted) / 1000).toFixed(1)} s`);
  const list: Checkout[] = Array.from({ length: count }, (_, i) => ({
    userId: `ck-${label}-u${i + 1}`,
    couponId: `ck-${label}-${i + 1}`,
    orderId: `ck-${label}-o${i + 1}`,
    startedAt: 0,
  }));
  return { policyId, checkouts: list, tokens: await Promise.all(list.map((c) => ctx.sign(c.userId, 'user'))) };
}

/** Waits until every published payment of the policy has used its coupon (or the timeout); the coupons used. */
async function settle(ctx: CheckoutContext, policyId: string, published: number): Promise<number> {
  const until = Date.now() + ctx.settleTimeoutMs;
  for (;;) {
    const { rows } = await ctx.pg.query<{ n: string }>("SELECT count(*) AS n FROM coupons WHERE policy_id = $1 AND status = 'USED'", [
      policyId,
    ]);
    const used = Number(rows[0]?.n ?? 0);
    if (used >= published || Date.now() > until) return used;
    await sleep(250);
  }
}

/** The warm-up: the service meets the measured load JIT-compiled and with open pools. Its invariants. */
export async function warmUp(ctx: CheckoutContext, label: string, seconds: number): Promise<Invariant[]> {
  const warm = await prepare(ctx, label, ctx.rate * seconds);
  note(`warm-up: ${fmtInt(ctx.rate)} checkouts/s for ${seconds} s, not counted`);
  await drive(ctx.call, ctx.publisher, warm, ctx.rate);
  const warmUsed = await settle(ctx, warm.policyId, warm.checkouts.filter((c) => c.publishedAt !== undefined && !c.failure).length);
  const invariants = await auditCheckouts(ctx.pg, warm.policyId, warm.checkouts, warmUsed);
  const failed = invariants.filter((i) => !i.ok);
  note(
    `warm-up invariants: ${failed.length ? failed.map((i) => `FAIL ${i.name}: ${i.detail}`).join('; ') : `all ${invariants.length} held`}`,
  );
  await sleep(2_000);
  return invariants;
}

/** One measured run: its own shoppers and policy, the load, the settle, the numbers. */
export async function measureRun(
  ctx: CheckoutContext,
  opts: { run: number; runs: number; label: string; users: number; durationS: number },
) {
  const measured = await prepare(ctx, opts.label, opts.users);
  const { policyId, checkouts } = measured;
  note(`load${opts.runs > 1 ? ` (run ${opts.run}/${opts.runs})` : ''}: ${fmtInt(ctx.rate)} checkouts/s for ${opts.durationS} s`);
  const memoryBefore = await redisUsedMemory(ctx.redis);
  const endCpu = startCpuPhase(classifier(ctx.stack.mode === 'spawned' ? ctx.stack.pids : null));
  const { loadStart, loadEnd, started: next, maxInFlight, behind } = await drive(ctx.call, ctx.publisher, measured, ctx.rate);
  const lastReservedAt = Math.max(...checkouts.map((c) => c.reservedAt ?? 0));

  // ---- settle: every published event applied ----
  const published = checkouts.filter((c) => c.publishedAt !== undefined && !c.failure);
  note(`waiting for ${fmtInt(published.length)} payments to be applied`);
  const used = await settle(ctx, policyId, published.length);
  const cpu = endCpu();
  const memoryAfter = await redisUsedMemory(ctx.redis);

  // ---- measurements ----
  const usedRows = await ctx.pg.query<{ id: string; used_at: Date }>(
    "SELECT id, used_at FROM coupons WHERE policy_id = $1 AND status = 'USED'",
    [policyId],
  );
  const usedAt = new Map(usedRows.rows.map((r) => [r.id, r.used_at.getTime()]));
  const eventToUsed = published
    .map((c) => (usedAt.has(c.couponId) ? (usedAt.get(c.couponId) as number) - (c.publishedAt as number) : null))
    .filter((v): v is number => v !== null)
    .sort((a, b) => a - b);
  const reserveLatency = checkouts
    .filter((c) => c.reservedAt !== undefined)
    .map((c) => (c.reservedAt as number) - c.startedAt)
    .sort((a, b) => a - b);
  const reserved = checkouts.filter((c) => c.reservedAt !== undefined).length;
  const lastUsedAt = Math.max(...usedAt.values());
  const loadSeconds = (loadEnd - loadStart) / 1000;
  const failures = checkouts.filter((c) => c.failure);
  const failureKinds: Record<string, number> = {};
  for (const f of failures) failureKinds[(f.failure as string).slice(0, 60)] = (failureKinds[(f.failure as string).slice(0, 60)] ?? 0) + 1;
  const measure = {
    started: next,
    reserved,
    published: published.length,
    used,
    failures: failures.length,
    failureKinds,
    behindTicks: behind,
    maxInFlight,
    loadSeconds: round(loadSeconds, 2),
    reservationsPerSec: round(reserved / ((lastReservedAt - loadStart) / 1000), 1),
    checkoutsPerSec: round(used / ((lastUsedAt - loadStart) / 1000), 1),
    tailAfterLoadMs: round(lastUsedAt - loadEnd, 0),
    reserveMs: { p50: percentile(reserveLatency, 50), p95: percentile(reserveLatency, 95), p99: percentile(reserveLatency, 99) },
    eventToUsedMs: {
      p50: percentile(eventToUsed, 50),
      p95: percentile(eventToUsed, 95),
      p99: percentile(eventToUsed, 99),
      max: eventToUsed.at(-1) ?? null,
    },
    // CPU milliseconds per checkout, load and settle together, by part of the system.
    cpuMsPerCheckout: Object.fromEntries(
      Object.entries(cpu.groupsMs)
        .filter(([g]) => g !== 'baseline')
        .map(([g, ms]) => [g, used ? round(ms / used, 3) : null]),
    ),
    machineBusyPct: cpu.machineBusyPct,
    // Jobs, their results, idempotency records, stream entries: what the checkouts left in Redis.
    redisBytesPerCheckout: used ? round((memoryAfter - memoryBefore) / used, 0) : null,
  };
  for (const key of ['reserveMs', 'eventToUsedMs'] as const) {
    for (const [k, v] of Object.entries(measure[key])) (measure[key] as Record<string, number | null>)[k] = v === null ? null : round(v, 1);
  }

  const invariants = await auditCheckouts(ctx.pg, policyId, checkouts, used);
  const { keptPace, sustained, p95UnderBar } = judgeRun(ctx.rate, loadSeconds, measure);
  return { run: opts.run, policyId, measure, keptPace, sustained, p95UnderBar, invariants, invariantsHeld: invariants.every((i) => i.ok) };
}

export type CheckoutRun = Awaited<ReturnType<typeof measureRun>>;
export type RunMeasure = CheckoutRun['measure'];
