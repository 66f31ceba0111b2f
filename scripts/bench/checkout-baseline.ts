// The checkout bench's bare baseline, measured in the same run right after each measured run: the same
// open loop, rate and connections against the bare server of baseline-server.ts (Hono and nothing of
// the service), one route at a time:
//   insert  Hono and one Postgres INSERT per request: the least a durable reserve can cost
//   admit   Hono and one Redis Lua script per request (the stock covers every request: all win)
// Reported per route: latency, the CPU of the bare server with the Postgres and Redis it used, per
// request, and a checkout's service CPU (web, worker, bridge, Postgres, Redis, Kafka) as a multiple
// of it. The ratio says what the service's machinery costs over the bare work on this box, whatever
// the box; the absolute figures move with the machine.
import type { Client as PgClient } from 'pg';
import type { Call } from './api';
import type { Baseline } from './baseline';
import { checkpoint, fmtInt, fmtMs, median, note, percentile, round, sleep, wallNow } from './common';
import { startCpuPhase, type Classifier, type CpuGroup } from './cpu';
import { openLoop } from './open-loop';

export type BareRoute = 'insert' | 'admit';

export const BARE_ROUTES: Record<BareRoute, string> = {
  insert: 'Hono + one Postgres INSERT',
  admit: 'Hono + one Redis Lua script',
};

/** The processes whose CPU a checkout is billed: everything the service runs on, not the bench. */
const SERVICE_GROUPS: CpuGroup[] = ['web', 'worker', 'bridge', 'postgres', 'redis', 'kafka'];
/** And a bare request's: the bare server and the one service its route talks to. */
const BARE_GROUPS: Record<BareRoute, CpuGroup[]> = { insert: ['baseline', 'postgres'], admit: ['baseline', 'redis'] };

export interface BareResult {
  route: BareRoute;
  rate: number;
  requests: number;
  failed: number;
  latencyMs: { p50: number | null; p95: number | null; p99: number | null };
  /** CPU ms per request by process group (bench and other included, as for a checkout). */
  cpuMsPerRequest: Record<string, number>;
  /** The bare server's CPU and that of the service its route talks to (BARE_GROUPS), per request. */
  serviceCpuMs: number;
  machineBusyPct: number;
}

export interface BareContext {
  baseline: Baseline;
  /** Calls to the bare server. */
  call: Call;
  /** For the CHECKPOINT before each bare run: it does not pay for the checkouts' writes. */
  pg: PgClient;
  sign: (sub: string, role: 'user' | 'admin') => Promise<string>;
  classify: Classifier;
}

/** Each route in turn, after a checkpoint and a second's pause, under the open loop at `rate` for `seconds`. */
export async function bareRuns(ctx: BareContext, routes: BareRoute[], rate: number, seconds: number, label: string): Promise<BareResult[]> {
  const results: BareResult[] = [];
  for (const route of routes) {
    await checkpoint(ctx.pg);
    await sleep(1_000);
    results.push(await bareRun(ctx, route, rate, seconds, label));
  }
  return results;
}

/** One route of the bare server under the open loop at `rate` for `seconds`. */
async function bareRun(ctx: BareContext, route: BareRoute, rate: number, seconds: number, label: string): Promise<BareResult> {
  const count = Math.max(1, Math.round(rate * seconds));
  const sale = `checkout-${label}-${route}`;
  if (route === 'admit') await ctx.baseline.prepareSale(sale, count);
  // The bare server reads the subject without verifying it; distinct users, as the checkouts are.
  const tokens = await Promise.all(Array.from({ length: count }, (_, i) => ctx.sign(`bare-${label}-${i}`, 'user')));
  const took: number[] = [];
  let failed = 0;
  note(`bare baseline: ${BARE_ROUTES[route]}, ${fmtInt(rate)} requests/s for ${seconds} s`);
  const endCpu = startCpuPhase(ctx.classify);
  await openLoop(count, rate, async (i) => {
    const startedAt = wallNow();
    try {
      const reply = await ctx.call('POST', `/${route}`, tokens[i] as string, { policyId: sale });
      if (reply.status === 200 && reply.body?.status === 'succeeded') took.push(wallNow() - startedAt);
      else failed += 1;
    } catch {
      failed += 1;
    }
  });
  const cpu = endCpu();
  took.sort((a, b) => a - b);
  const per = (ms: number) => round(ms / count, 3);
  const at = (p: number) => {
    const v = percentile(took, p);
    return v === null ? null : round(v, 1);
  };
  return {
    route,
    rate,
    requests: count,
    failed,
    latencyMs: { p50: at(50), p95: at(95), p99: at(99) },
    cpuMsPerRequest: Object.fromEntries(Object.entries(cpu.groupsMs).map(([g, ms]) => [g, per(ms)])),
    serviceCpuMs: per(BARE_GROUPS[route].reduce((sum, g) => sum + cpu.groupsMs[g], 0)),
    machineBusyPct: cpu.machineBusyPct,
  };
}

/** A checkout's service CPU in ms (the sum over SERVICE_GROUPS), or null when no coupon was used. */
export function checkoutServiceCpuMs(cpuMsPerCheckout: Record<string, number | null>): number | null {
  const parts = SERVICE_GROUPS.map((g) => cpuMsPerCheckout[g]);
  if (parts.some((v) => v === null || v === undefined)) return null;
  return round(
    parts.reduce<number>((sum, v) => sum + (v ?? 0), 0),
    3,
  );
}

/** How many bare requests' CPU one checkout costs; null when either side is unknown or zero. */
export function cpuRatio(checkoutMs: number | null, bare: BareResult): number | null {
  if (checkoutMs === null || bare.serviceCpuMs <= 0) return null;
  return round(checkoutMs / bare.serviceCpuMs, 1);
}

/** The lines a run prints for its bare baseline, under the run's own. */
export function bareLines(checkoutMs: number | null, bares: BareResult[]): string[] {
  return bares.flatMap((b) => {
    const ratio = cpuRatio(checkoutMs, b);
    return [
      `  bare ${BARE_ROUTES[b.route]} at ${fmtInt(b.rate)}/s: p50 ${fmtMs(b.latencyMs.p50)} / p95 ${fmtMs(b.latencyMs.p95)} / p99 ${fmtMs(b.latencyMs.p99)}${b.failed ? `, ${fmtInt(b.failed)} failed` : ''}; cpu ms per request: ${Object.entries(
        b.cpuMsPerRequest,
      )
        .filter(([, ms]) => ms > 0)
        .map(([g, ms]) => `${g} ${ms}`)
        .join(', ')}; machine ${b.machineBusyPct}% busy`,
      `    a checkout's service CPU (${checkoutMs ?? 'n/a'} ms) = ${ratio ?? 'n/a'} × this request's (${b.serviceCpuMs} ms: ${BARE_GROUPS[b.route].join(' + ')})`,
    ];
  });
}

/** The medians over the runs, per route: the bare request's service CPU and p95, and the ratio. */
export function bareSummary(runs: { checkoutMs: number | null; bare: BareResult[] }[]): string[] {
  const routes = [...new Set(runs.flatMap((r) => r.bare.map((b) => b.route)))];
  return routes.map((route) => {
    const pairs = runs.flatMap((r) => r.bare.filter((b) => b.route === route).map((b) => ({ b, ratio: cpuRatio(r.checkoutMs, b) })));
    const ratios = pairs.map((p) => p.ratio);
    return `  bare ${BARE_ROUTES[route]}, median: service CPU ${median(pairs.map((p) => p.b.serviceCpuMs))} ms a request, p95 ${fmtMs(median(pairs.map((p) => p.b.latencyMs.p95)))}; a checkout = ${median(ratios) ?? 'n/a'} × its CPU (runs: ${ratios.map((r) => r ?? 'n/a').join(' · ')})`;
  });
}
