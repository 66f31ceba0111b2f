// `npm run faults`: every fault of test/faults/faults.ts on its own, each in a fresh world (the service
// under the supervisor: 2 webs, 3 workers, 1 bridge), then a schedule of several drawn from a seed;
// one checker over every answer and the final database; a table of violations per invariant.
//
//   npm run faults                               # every fault, then a schedule of 3 (SEED random)
//   FAULTS=kill-worker,redis-empty npm run faults
//   SHOPPERS=2000 STOCK=500 SEED=7 SCHEDULE=4 npm run faults
//
// Exit code 0 when every scenario had no violation and every fault hit work in flight; 1 otherwise.
// The whole result is written to .data/faults/<time>.json, the table to .data/faults/latest.md.
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { consoleLogger, repoRoot } from '../../scripts/infra/process';
import { ensureServices } from '../../scripts/infra/services';
import { FAULTS, type Fault } from './faults';
import { runScenario, type ScenarioResult, type Strike } from './scenario';
import { createWorld } from './world';

export interface SuiteOptions {
  faults: Fault[];
  shoppers: number;
  stock: number;
  /** Faults in the schedule of several (0: none). */
  schedule: number;
  seed: number;
  log: (line: string) => void;
}

export interface SuiteRow {
  name: string;
  result?: ScenarioResult;
  error?: string;
}

/** A small seeded generator (mulberry32), so a schedule can be run again. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * When in its phase a fault may strike, as shares of the phase's finals. A sale's work in flight is
 * at its start (the first come are admitted and issued; once the stock is admitted, the web refuses
 * the rest itself and no job is left to break), so a sale's faults are aimed from the sale's start:
 * aiming (scenario.ts) can wait for work that has not started yet, never for work that is over. On a
 * loaded machine a strike at 0.3 of the sale once found every winner already issued and hit nothing;
 * so did one at 0.1 on a loaded CI run (no admission pending, no job, 97 clients waiting for the
 * outcomes of a batch already committed: the refused were told before the winners' push arrived).
 * A fault run on its own strikes at the window's `alone`; a schedule draws its moment from `from` to `to`.
 */
const MOMENTS = {
  sale: { alone: 0, from: 0, to: 0.1 },
  other: { alone: 0.3, from: 0.15, to: 0.65 },
};
const momentsOf = (fault: Fault) => (fault.phase === 'sale' ? MOMENTS.sale : MOMENTS.other);
const momentOf = (fault: Fault) => momentsOf(fault).alone;

/**
 * Up to `count` faults drawn from the seed, one per phase (a sale, its reserves, its payments), each
 * at a moment drawn from the seed within its phase's window: a second fault in one phase would often
 * find it over.
 */
export function scheduleOf(faults: Fault[], count: number, seed: number): Strike[] {
  const next = random(seed);
  const phases = [...new Set(faults.map((f) => f.phase))];
  const strikes: Strike[] = [];
  while (strikes.length < count && phases.length > 0) {
    const [phase] = phases.splice(Math.floor(next() * phases.length), 1);
    const pool = faults.filter((f) => f.phase === phase);
    const fault = pool[Math.floor(next() * pool.length)] as Fault;
    const { from, to } = momentsOf(fault);
    strikes.push({ fault, at: from + (to - from) * next() });
  }
  return strikes;
}

export async function runSuite(opts: SuiteOptions): Promise<SuiteRow[]> {
  const plans: { name: string; strikes: Strike[] }[] = opts.faults.map((fault) => ({
    name: fault.name,
    strikes: [{ fault, at: momentOf(fault) }],
  }));
  if (opts.schedule > 0) {
    const strikes = scheduleOf(opts.faults, opts.schedule, opts.seed);
    plans.push({ name: `schedule(seed ${opts.seed}): ${strikes.map((s) => s.fault.name).join(' + ')}`, strikes });
  }
  const rows: SuiteRow[] = [];
  for (const [i, plan] of plans.entries()) {
    opts.log(`${plan.name}: starting (${i + 1}/${plans.length})`);
    // The world every fault of the plan needs: 2 webs, 3 workers, 1 bridge, unless one asks for more.
    const needs = plan.strikes.map((s) => s.fault.world ?? {});
    const formation = Object.assign({ web: 2, worker: 3, bridge: 1 }, ...needs.map((n) => n.formation ?? {}));
    const kafka = needs.some((n) => n.kafka === 'own') ? 'own' : 'shared';
    // Failpoints of several faults are armed together (FAILPOINTS is a list).
    const failpoints = needs.flatMap((n) => (n.env?.FAILPOINTS ? [n.env.FAILPOINTS] : [])).join(',');
    let world: Awaited<ReturnType<typeof createWorld>> | undefined;
    try {
      world = await createWorld({
        formation,
        kafka,
        tag: `${process.pid}_${i}`,
        log: opts.log,
        ...(failpoints && { env: { FAILPOINTS: failpoints } }),
      });
      const result = await runScenario({ world, shoppers: opts.shoppers, stock: opts.stock, strikes: plan.strikes, log: opts.log });
      rows.push({ name: plan.name, result });
      opts.log(`${plan.name}: ${result.check.total} violation(s); restarts ${world.restarts()}`);
    } catch (error) {
      rows.push({ name: plan.name, error: (error as Error).stack ?? String(error) });
      opts.log(`${plan.name}: could not run: ${(error as Error).message}`);
    } finally {
      await world?.stop();
    }
  }
  return rows;
}

/** Whether a row passed: it ran, every fault hit work in flight, nothing was violated, and everything settled. */
export function passed(row: SuiteRow): boolean {
  return !!row.result && row.result.check.total === 0 && row.result.unsettled === null && row.result.strikes.every((s) => s.hit);
}

/** The recovery cell: time to the first outcome after the fault, or that outcomes kept coming during it. */
function recovery(s: ScenarioResult['strikes'][number]): string {
  if (s.recoveryMs !== null) return `${(s.recoveryMs / 1000).toFixed(1)} s`;
  return s.toldDuring > 0 ? `never stopped (${s.toldDuring} told during it)` : 'none';
}

export function table(rows: SuiteRow[]): string {
  const lines = ['| fault | load | in flight when it struck | answers | violations | recovery |', '| --- | --- | --- | --- | --- | --- |'];
  for (const row of rows) {
    if (!row.result) {
      lines.push(`| ${row.name} | | | | could not run: ${(row.error ?? '').split('\n')[0]} | |`);
      continue;
    }
    const { strikes, check, load } = row.result;
    const flight = strikes
      .map(
        (s) =>
          `${s.hit ? '' : '**missed**: '}${s.inFlight.pendingAdmissions} admissions, jobs ${Object.entries(s.inFlight.jobs)
            .map(([q, n]) => `${q} ${n}`)
            .join('/')}, ${s.inFlight.clientsWaiting} waiting`,
      )
      .join('; ');
    const bad: [string, number | string][] = Object.entries(check.violations).filter(([, n]) => n > 0);
    if (row.result.unsettled !== null) bad.push(['not settled', row.result.unsettled]);
    const c = check.counts;
    lines.push(
      `| ${row.name} | ${load.shoppers} shoppers, ${load.stock} coupons, ${load.checkouts} checkouts, ${load.events} payment and ${load.userEvents} user events | ${flight} | ${c.won} won, ${c.lost} lost, ${c.failedRequests} failed requests asked again; ${c.reserved} reserved, ${c.used} used, ${c.restored} refunded; ${c.eventCoupons} event coupons | ${bad.length === 0 ? '0' : bad.map(([k, n]) => `**${k} ${n}**`).join(', ')} | ${strikes.map(recovery).join(', ')} |`,
    );
  }
  return lines.join('\n');
}

async function main(): Promise<number> {
  process.env.JWT_SECRET ||= randomBytes(32).toString('base64url');
  process.env.CODE_HMAC_SECRET ||= randomBytes(32).toString('base64url');
  const wanted = (process.env.FAULTS ?? 'all').split(',').map((s) => s.trim());
  const faults = wanted.includes('all') ? FAULTS : FAULTS.filter((f) => wanted.includes(f.name));
  const unknown = wanted.filter((w) => w !== 'all' && !FAULTS.some((f) => f.name === w));
  if (unknown.length > 0) {
    process.stderr.write(`unknown fault(s) ${unknown.join(', ')}; known: ${FAULTS.map((f) => f.name).join(', ')}\n`);
    return 2;
  }
  const seed = Number(process.env.SEED ?? Math.floor(Math.random() * 1e6));
  // What every world shares, started here when nothing answers (as `npm test` does), stopped at the
  // end: the Postgres its scratch databases live in, and the Kafka broker of KAFKA_BROKERS. (Each
  // world runs a Redis of its own; the shared one is only looked for.)
  const shared = await ensureServices({
    databaseUrl: 'postgres://postgres@127.0.0.1:5432/postgres',
    redisUrl: 'redis://127.0.0.1:6379',
    kafkaBrokers: (process.env.KAFKA_BROKERS || '127.0.0.1:9092').split(','),
    log: consoleLogger,
  });
  const began = Date.now();
  let rows: SuiteRow[];
  try {
    rows = await runSuite({
      faults,
      shoppers: Number(process.env.SHOPPERS ?? 1500),
      stock: Number(process.env.STOCK ?? 400),
      schedule: Number(process.env.SCHEDULE ?? (wanted.includes('all') ? 3 : 0)),
      seed,
      log: (line) => process.stderr.write(`[faults +${((Date.now() - began) / 1000).toFixed(1)} s] ${line}\n`),
    });
  } finally {
    await shared.stop();
  }
  const dir = path.join(repoRoot(), '.data', 'faults');
  mkdirSync(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  writeFileSync(path.join(dir, `${stamp}.json`), JSON.stringify({ seed, rows }, null, 2));
  const text = table(rows);
  writeFileSync(path.join(dir, 'latest.md'), `${text}\n`);
  process.stdout.write(`\n${text}\n\n`);
  for (const row of rows.filter((r) => r.result && r.result.check.total > 0)) {
    process.stdout.write(`${row.name}: ${JSON.stringify(row.result?.check.examples)}\n`);
  }
  const failed = rows.filter((r) => !passed(r));
  process.stdout.write(`faults: ${rows.length - failed.length} passed, ${failed.length} failed (seed ${seed})\n`);
  return failed.length === 0 ? 0 : 1;
}

if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (error: unknown) => {
      process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
      process.exit(2);
    },
  );
}
