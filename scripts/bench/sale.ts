// One measured sale of the flash-sale bench, in three steps: load (a fresh policy, every user asks
// once until it knows), settle (the issue queue drains) and audit (scripts/bench/sale-audit.ts); and
// the same load against the bare baseline server. Both answer a SaleResult the report reads.
import { randomBytes } from 'node:crypto';
import type { Queue } from 'bullmq';
import type IORedis from 'ioredis';
import type { Client as PgClient } from 'pg';
import type { Baseline } from './baseline';
import { fmtInt, fmtMs, note, percentile, redisUsedMemory, round, sleep } from './common';
import { startCpuPhase, type Classifier, type CpuGroup, type CpuReport } from './cpu';
import { auditSale, countOutcomes, type Check, type CouponStats, type OutcomeCounts } from './sale-audit';
import { runShoppers, type AskMode, type LoadResult } from './shoppers';
import type { Stack } from './stack';

const LIVE_STATES = ['waiting', 'active', 'delayed', 'prioritized', 'waiting-children'] as const;

/** What a shopper feels, for one sale: how fast users learn their outcome, and what it was. */
export interface ShopperFigures {
  users: number;
  /** Users who know their outcome (won or a rejection reason). */
  known: number;
  durationMs: number;
  outcomesPerSec: number;
  /** Request sent → outcome known, over the users who know. */
  toOutcomeMs: { p50: number | null; p95: number | null; p99: number | null; max: number | null };
  firstAnswersPerSec: number;
  /** HTTP requests per user (1 when `Prefer: wait` answered at once; polls add to it). */
  requestsPerUser: number;
  counts: OutcomeCounts;
}

export interface SaleResult {
  label: string;
  mode: AskMode | 'baseline';
  policyId: string;
  figures: ShopperFigures;
  /** CPU milliseconds per shopper, load and settle together, by process group. */
  cpuMsPerShopper: Record<CpuGroup | 'other', number>;
  machineBusyPct: number;
  redisBytesPerAccepted: number | null;
  coupons: CouponStats | null;
  checks: Check[];
  held: boolean;
}

export interface SaleContext {
  stack: Stack;
  sign: (sub: string, role: 'user' | 'admin') => Promise<string>;
  adminToken: string;
  queue: Queue;
  redis: IORedis;
  pg: PgClient;
  connections: number;
  settleTimeoutMs: number;
  cpuClassifier: Classifier;
}

/** The figures a shopper feels, from the generator's per-user record. */
export function shopperFigures(load: LoadResult): ShopperFigures {
  const { shoppers, startedAt } = load;
  const knows = shoppers.filter((s) => s.outcome !== null && s.outcome !== 'refused' && s.outcome !== 'failed');
  const times = knows.map((s) => s.doneAt - s.sentAt).sort((a, b) => a - b);
  const lastDone = Math.max(startedAt, ...shoppers.map((s) => s.doneAt));
  const answered = shoppers.filter((s) => s.firstAt > 0);
  const lastFirst = Math.max(startedAt, ...answered.map((s) => s.firstAt));
  const r = (v: number | null) => (v === null ? null : round(v, 1));
  const durationMs = lastDone - startedAt;
  return {
    users: shoppers.length,
    known: knows.length,
    durationMs: round(durationMs, 1),
    outcomesPerSec: durationMs > 0 ? round(knows.length / (durationMs / 1000)) : 0,
    toOutcomeMs: {
      p50: r(percentile(times, 50)),
      p95: r(percentile(times, 95)),
      p99: r(percentile(times, 99)),
      max: r(times.at(-1) ?? null),
    },
    firstAnswersPerSec: lastFirst > startedAt ? round(answered.length / ((lastFirst - startedAt) / 1000)) : 0,
    requestsPerUser: round(load.requests / Math.max(1, shoppers.length), 2),
    counts: countOutcomes(shoppers),
  };
}

function perShopper(cpu: CpuReport, users: number): Record<CpuGroup | 'other', number> {
  return Object.fromEntries(Object.entries(cpu.groupsMs).map(([g, ms]) => [g, round(ms / Math.max(1, users), 3)])) as Record<
    CpuGroup | 'other',
    number
  >;
}

/** A fresh FIRST_COME policy with `stock` coupons, open now. */
async function createPolicy(ctx: SaleContext, stock: number, tag: string): Promise<string> {
  const res = await fetch(new URL('/api/v1/coupons/policies', ctx.stack.baseUrl), {
    method: 'POST',
    headers: { authorization: `Bearer ${ctx.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      name: `bench flash sale ${tag}`,
      description: 'created by scripts/bench/flash-sale.ts',
      discount: { type: 'FIXED', value: 1000 },
      issueMethod: 'FIRST_COME',
      totalQuantity: stock,
      perUserLimit: 1,
      issueWindow: { startsAt: new Date(Date.now() - 60_000).toISOString() },
      validity: { days: 7 },
    }),
    signal: AbortSignal.timeout(15_000),
  });
  const text = await res.text();
  if (res.status === 401) throw new Error(`the stack refused the admin token (401): JWT_SECRET is not the one ${ctx.stack.baseUrl} uses`);
  if (res.status !== 201) throw new Error(`creating the policy answered ${res.status}: ${text.slice(0, 300)}`);
  return String((JSON.parse(text) as { id: string }).id);
}

/** Waits for the issue queue to hold no live job: every job of the sale settled. */
async function drained(queue: Queue, timeoutMs: number): Promise<{ ok: boolean; detail: string }> {
  const started = performance.now();
  for (;;) {
    const counts = await queue.getJobCounts(...LIVE_STATES);
    const live = Object.values(counts).reduce((a, b) => a + b, 0);
    const waited = performance.now() - started;
    if (live === 0) return { ok: true, detail: `queue empty ${fmtMs(waited)} after the last outcome` };
    if (waited > timeoutMs) return { ok: false, detail: `${live} jobs still live after ${fmtMs(timeoutMs)}` };
    await sleep(50);
  }
}

/** Signs every user's token before the clock starts. */
async function usersOf(ctx: SaleContext, count: number, tag: string) {
  const userPrefix = `bench-${tag}-`;
  const users = Array.from({ length: count }, (_, i) => `${userPrefix}${i}`);
  const auth = (await Promise.all(users.map((u) => ctx.sign(u, 'user')))).map((t) => `Bearer ${t}`);
  return { userPrefix, users, auth };
}

/** One sale of the service: load, settle, audit. */
export async function serviceSale(
  ctx: SaleContext,
  opts: { label: string; mode: AskMode; users: number; stock: number },
): Promise<SaleResult> {
  const tag = `${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;
  const policyId = await createPolicy(ctx, opts.stock, tag);
  const { userPrefix, users, auth } = await usersOf(ctx, opts.users, tag);
  note(
    `${opts.label}: policy ${policyId}, ${fmtInt(opts.users)} users, asking with ${opts.mode === 'wait' ? 'Prefer: wait' : 'POST then poll'}`,
  );

  // ---- load ----
  const memoryBefore = await redisUsedMemory(ctx.redis);
  const endCpu = startCpuPhase(ctx.cpuClassifier);
  const load = await runShoppers({
    baseUrl: ctx.stack.baseUrls,
    connections: ctx.connections,
    mode: opts.mode,
    auth,
    body: JSON.stringify({ policyId }),
  });
  // ---- settle ----
  const settle = await drained(ctx.queue, ctx.settleTimeoutMs);
  const cpu = endCpu();
  const memoryAfter = await redisUsedMemory(ctx.redis);
  // ---- audit ----
  const audit = await auditSale({ pg: ctx.pg, policyId, stock: opts.stock, users, userPrefix, shoppers: load.shoppers, drained: settle });
  const accepted = load.shoppers.filter((s) => s.firstStatus === 200 || s.firstStatus === 202).length;
  return {
    label: opts.label,
    mode: opts.mode,
    policyId,
    figures: shopperFigures(load),
    cpuMsPerShopper: perShopper(cpu, opts.users),
    machineBusyPct: cpu.machineBusyPct,
    redisBytesPerAccepted: accepted > 0 ? round((memoryAfter - memoryBefore) / accepted, 1) : null,
    coupons: audit.coupons,
    checks: audit.checks,
    held: audit.checks.every((c) => c.ok),
  };
}

/** The same users and connections against one route of the bare baseline server. */
export async function baselineSale(
  ctx: SaleContext,
  baseline: Baseline,
  opts: { label: string; route: 'admit' | 'hello' | 'insert'; users: number; stock: number },
): Promise<SaleResult> {
  const saleId = `${opts.route}-${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;
  const { users, auth } = await usersOf(ctx, opts.users, saleId);
  if (opts.route === 'admit') await baseline.prepareSale(saleId, opts.stock);
  const endCpu = startCpuPhase(ctx.cpuClassifier);
  const load = await runShoppers({
    baseUrl: baseline.baseUrl,
    connections: ctx.connections,
    mode: 'wait',
    auth,
    body: JSON.stringify({ policyId: saleId }),
    path: `/${opts.route}`,
  });
  const cpu = endCpu();
  const figures = shopperFigures(load);
  const checks: Check[] = [
    { name: 'every user answered', ok: figures.known === users.length, detail: `${fmtInt(figures.known)} of ${fmtInt(users.length)}` },
  ];
  if (opts.route === 'admit') {
    const winners = await baseline.winners(saleId);
    const expected = Math.min(opts.stock, users.length);
    checks.push({
      name: `exactly ${fmtInt(expected)} winners`,
      ok: winners === expected && figures.counts.won === expected,
      detail: `${fmtInt(figures.counts.won)} told won, ${fmtInt(winners)} in Redis`,
    });
  }
  return {
    label: opts.label,
    mode: 'baseline',
    policyId: saleId,
    figures,
    cpuMsPerShopper: perShopper(cpu, opts.users),
    machineBusyPct: cpu.machineBusyPct,
    redisBytesPerAccepted: null,
    coupons: null,
    checks,
    held: checks.every((c) => c.ok),
  };
}
