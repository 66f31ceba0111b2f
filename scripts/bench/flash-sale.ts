// Flash-sale benchmark: what a shopper feels. USERS distinct users each ask once for a coupon of one
// FIRST_COME policy with STOCK coupons, CONNECTIONS of them at a time over keep-alive connections, and
// keep asking until they know their outcome. Both ways of asking are measured in every run, each on a
// fresh policy: `wait` (POST with `Prefer: wait=10`, the outcome in the answer) and `poll` (POST, then
// long-poll the statusUrl). In the same run the same load goes to a bare baseline server (Hono and one
// Redis Lua admission per request; also Hono alone and one Postgres INSERT per request), so the
// service's rate reads as a share of what the box does at most. Every sale is then audited
// (scripts/bench/sale-audit.ts): a refusal at the door or a failed outcome counts against the run.
//
// Usage:
//   npm run bench:flash-sale                   # the bar: 20,000 users, 2,000 coupons, 200 connections, 3 runs
//   MODES=wait RUNS=1 npm run bench:flash-sale # one run, `Prefer: wait` only
//   PROFILE=1 npm run bench:flash-sale         # web and workers under node --cpu-prof (.data/profiles)
//   BASE_URL=http://127.0.0.1:3000 JWT_SECRET=... npm run bench:flash-sale   # a stack that is already running
//
// Environment (defaults in brackets):
//   BASE_URL [http://127.0.0.1:3000]  STACK [auto: a running stack at BASE_URL, else one of its own]
//                                     reuse | spawn (always start one: npm run build, 1 web + WORKERS
//                                     workers + a bridge from the Procfile on a free port, stopped at the end)
//   USERS [20000]  STOCK [2000]  CONNECTIONS [200]  RUNS [3]  WORKERS [1]  WEBS [1]  MODES [wait,poll]
//                                     WEBS > 1: a spawned stack runs that many web processes, each on its own
//                                     port, and each user asks one of them (user i the i-th mod WEBS): a balancer
//   BASELINES [admit,hello,insert]    baseline routes measured each run (admit is the ratio's baseline; none: no baseline)
//   WARMUP [10000]                    users of an unmeasured sale first (stock a tenth), audited too (0: none)
//   BRIDGE [true]                     the spawned stack runs the Kafka bridge too, as a deployment does
//   KAFKA_BROKERS [127.0.0.1:9092]    for the bridge; a broker is started when none answers
//   PROFILE [false]                   CPU profiles of web and workers in .data/profiles (written at stop)
//   JWT_SECRET  DATABASE_URL  REDIS_URL [redis://127.0.0.1:6379]  QUEUE_PREFIX  BUILD [true]
//   LOG_LEVEL [warn]  SETTLE_TIMEOUT_MS [120000]   (as before; a spawned stack gets a scratch database)
//
// Output: a table of every sale per run and the medians on stdout, progress on stderr, and the whole
// result as JSON in bench/results/flash-sale-<timestamp>.json and bench/results/latest.json.
// Bar (Prefer: wait, medians): >= 6,000 shoppers a second know their outcome (stretch 10,000), p99
// request -> outcome < 200 ms; a miss is a MISS line. Invariants (every sale, warm-up included): exactly
// STOCK coupons, one per user, slots distinct in 1..STOCK, the users told "won" are the holders, every
// user got a final answer, no refusal at the door, no failed outcome, every job settled; a FAIL line.
// Exit code: 0 when every invariant held, 1 when one failed, 2 when the bench could not run.
import { randomUUID } from 'node:crypto';
import { cpus, loadavg } from 'node:os';
import path from 'node:path';
import { Queue } from 'bullmq';
import IORedis from 'ioredis';
import { Client as PgClient } from 'pg';
import { z } from 'zod';
import { urlWith } from '../../src/core/config';
import { consoleLogger } from '../infra/process';
import { ensureServices } from '../infra/services';
import { startBaseline, type Baseline } from './baseline';
import { checkpoint, fmtInt, gitState, int, list, note, round, runBench, signer, sleep, writeResults } from './common';
import { classifier } from './cpu';
import { baselineSale, serviceSale, type SaleContext, type SaleResult } from './sale';
import { BAR, BAR_MODE, barLines, invariantLines, medianRow, mediansOf, saleRow, TABLE_HEADER, type RunSales } from './sale-report';
import { chooseStack, ROOT, type Stack } from './stack';

const configSchema = z.object({
  BASE_URL: urlWith(['http:']).default('http://127.0.0.1:3000'),
  STACK: z.enum(['auto', 'reuse', 'spawn']).default('auto'),
  USERS: int(20_000),
  STOCK: int(2_000),
  CONNECTIONS: int(200),
  RUNS: int(3),
  // One worker process: on 2 cores a second one adds context switches and smaller batches, not throughput.
  WORKERS: int(1),
  WEBS: int(1),
  MODES: list(['wait', 'poll'], 'wait,poll'),
  BASELINES: list(['admit', 'hello', 'insert'], 'admit,hello,insert'),
  JWT_SECRET: z.string().min(32, 'must be at least 32 characters (HS256 key)').optional(),
  DATABASE_URL: urlWith(['postgres:', 'postgresql:']).optional(),
  REDIS_URL: urlWith(['redis:', 'rediss:']).default('redis://127.0.0.1:6379'),
  KAFKA_BROKERS: z.string().default('127.0.0.1:9092'),
  QUEUE_PREFIX: z.string().min(1).optional(),
  BUILD: z.stringbool().default(true),
  BRIDGE: z.stringbool().default(true),
  PROFILE: z.stringbool().default(false),
  SETTLE_TIMEOUT_MS: int(120_000, 1_000),
  WARMUP: int(10_000, 0),
});
type Config = z.infer<typeof configSchema>;

function loadConfig(): Config {
  // Empty strings count as unset, like src/core/config.ts.
  const env = Object.fromEntries(Object.entries(process.env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = configSchema.safeParse(env);
  if (!parsed.success) {
    process.stderr.write(`invalid configuration:\n  ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('\n  ')}\n`);
    process.exit(2);
  }
  return parsed.data;
}

type StopHooks = (() => Promise<void>)[];

/** A running stack at BASE_URL, or one of our own (with a scratch database, queue prefix, topics). */
function stackOf(cfg: Config, stopHooks: StopHooks): Promise<{ stack: Stack; databaseUrl: string }> {
  const tag = randomUUID().slice(0, 8);
  return chooseStack({
    stack: cfg.STACK,
    running: { baseUrl: cfg.BASE_URL, queuePrefix: cfg.QUEUE_PREFIX ?? 'coupon' },
    jwtSecret: cfg.JWT_SECRET,
    databaseUrl: cfg.DATABASE_URL,
    redisUrl: cfg.REDIS_URL,
    build: cfg.BUILD,
    databaseTag: `flash_${tag}`,
    async beforeSpawn(databaseUrl) {
      if (!cfg.BRIDGE) return;
      const services = await ensureServices({
        databaseUrl,
        redisUrl: cfg.REDIS_URL,
        kafkaBrokers: cfg.KAFKA_BROKERS.split(','),
        log: consoleLogger,
      });
      stopHooks.push(() => services.stop());
    },
    spawn: {
      workers: cfg.WORKERS,
      webs: cfg.WEBS,
      queuePrefix: cfg.QUEUE_PREFIX ?? `bench-${tag}`,
      bridge: cfg.BRIDGE,
      env: cfg.BRIDGE
        ? {
            KAFKA_BROKERS: cfg.KAFKA_BROKERS,
            KAFKA_PAYMENTS_TOPIC: `payments.v1.bench-${tag}`,
            KAFKA_USER_EVENTS_TOPIC: `user-events.v1.bench-${tag}`,
            KAFKA_GROUP_ID: `bench-bridge-${tag}`,
          }
        : {},
      profileDir: cfg.PROFILE ? path.join(ROOT, '.data', 'profiles') : undefined,
    },
    keepQueues: cfg.QUEUE_PREFIX !== undefined,
    stopHooks,
    log: note,
  });
}

/** The warm-up: an unmeasured sale (and a short baseline one), audited like the others. */
async function warmUp(ctx: SaleContext, cfg: Config, baseline: Baseline | null): Promise<SaleResult | null> {
  if (cfg.WARMUP === 0) return null;
  const warm = await serviceSale(ctx, {
    label: 'warm-up',
    mode: cfg.MODES[0] ?? 'wait',
    users: cfg.WARMUP,
    stock: Math.max(1, Math.round(cfg.WARMUP / 10)),
  });
  note(`warm-up: ${fmtInt(cfg.WARMUP)} users at ${fmtInt(warm.figures.outcomesPerSec)} outcomes/s, not counted`);
  if (baseline) {
    for (const route of cfg.BASELINES)
      await baselineSale(ctx, baseline, { label: `warm-up ${route}`, route, users: Math.min(cfg.WARMUP, 5_000), stock: 500 });
  }
  await sleep(2_000);
  return warm;
}

/** One run: each way of asking on a fresh policy, then the baselines right after, on the same machine state. */
async function measureRun(ctx: SaleContext, cfg: Config, baseline: Baseline | null, run: number): Promise<RunSales> {
  const sales: Record<string, SaleResult> = {};
  for (const mode of cfg.MODES) {
    await checkpoint(ctx.pg);
    sales[mode] = await serviceSale(ctx, { label: `run ${run} ${mode}`, mode, users: cfg.USERS, stock: cfg.STOCK });
    process.stdout.write(`${saleRow(run, mode, sales[mode] as SaleResult)}\n`);
    await sleep(1_000);
  }
  if (baseline) {
    for (const route of cfg.BASELINES) {
      const name = route === 'admit' ? 'baseline' : route;
      await checkpoint(ctx.pg);
      sales[name] = await baselineSale(ctx, baseline, { label: `run ${run} ${name}`, route, users: cfg.USERS, stock: cfg.STOCK });
      process.stdout.write(`${saleRow(run, name, sales[name] as SaleResult)}\n`);
    }
  }
  process.stdout.write(
    ratioLines(cfg, sales)
      .map((l) => `${''.padEnd(14)}${l}\n`)
      .join(''),
  );
  return { run, sales };
}

/** Each way of asking's outcome rate as a share of each baseline route's (Hono alone, one Lua script, one INSERT). */
function ratioLines(cfg: Config, sales: Record<string, SaleResult>): string[] {
  const bases = ['baseline', 'hello', 'insert'].filter((b) => sales[b]);
  if (bases.length === 0) return [];
  return cfg.MODES.map((mode) => {
    const ours = sales[mode]?.figures.outcomesPerSec ?? 0;
    const parts = bases.map(
      (b) =>
        `${b === 'baseline' ? 'one Lua admission' : b === 'hello' ? 'Hono alone' : 'one INSERT'} ${round(ours / Math.max(1, sales[b]?.figures.outcomesPerSec ?? 0), 2)}`,
    );
    return `${mode}: ${fmtInt(ours)} outcomes/s = ${parts.join(', ')} of the bare server's rate`;
  });
}

/** The medians table, the bar and the invariant gate; answers the lines and whether every invariant held. */
function summarize(cfg: Config, runs: RunSales[], warm: SaleResult | null) {
  const names = [...cfg.MODES, ...cfg.BASELINES.map((r) => (r === 'admit' ? 'baseline' : r))];
  const medians = Object.fromEntries(names.map((n) => [n, mediansOf(runs, n)]));
  const bars = barLines(medians[BAR_MODE] ?? null);
  const gated = [
    ...(warm ? [{ label: 'warm-up', sale: warm, gate: true }] : []),
    ...runs.flatMap((r) =>
      Object.entries(r.sales).map(([name, sale]) => ({ label: `run ${r.run} ${name}`, sale, gate: sale.mode !== 'baseline' })),
    ),
  ];
  const invariants = invariantLines(gated);
  const lines = [
    '',
    `Medians of ${runs.length} run(s):`,
    TABLE_HEADER,
    ...names.flatMap((n) => (medians[n] ? [medianRow(n, medians[n])] : [])),
    '',
    `Bar (${BAR_MODE === 'wait' ? 'Prefer: wait' : BAR_MODE}, medians):`,
    ...(cfg.MODES.includes(BAR_MODE)
      ? bars.map((b) => `  ${b.ok ? 'PASS' : 'MISS'}  ${b.name.padEnd(36)} ${b.shown.padEnd(10)} (bar ${b.target})`)
      : ['  MISS  no `wait` sale measured (MODES)']),
    'Invariants:',
    ...invariants.lines,
  ];
  return { lines, medians, bars, held: invariants.held };
}

async function main(): Promise<number> {
  const cfg = loadConfig();
  const connections = Math.min(cfg.CONNECTIONS, cfg.USERS);
  const startedAt = new Date();
  const stopHooks: StopHooks = [];
  const stopAll = async () => {
    for (const hook of stopHooks.splice(0).reverse()) await hook().catch((e: Error) => note(`cleanup: ${e.message}`));
  };
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => void stopAll().finally(() => process.exit(130)));

  try {
    const { stack, databaseUrl } = await stackOf(cfg, stopHooks);
    const baseline = cfg.BASELINES.length ? await startBaseline({ redisUrl: cfg.REDIS_URL, log: note }) : null;
    if (baseline) stopHooks.push(() => baseline.stop());
    const sign = signer(stack.jwtSecret);
    const redis = new IORedis(cfg.REDIS_URL, { maxRetriesPerRequest: null });
    const queue = new Queue('issue', { connection: redis, prefix: stack.queuePrefix });
    const pg = new PgClient({ connectionString: databaseUrl, application_name: 'coupon-bench' });
    await pg.connect();
    stopHooks.push(async () => {
      await queue.close();
      redis.disconnect();
      await pg.end();
    });
    const ctx: SaleContext = {
      stack,
      sign,
      adminToken: await sign('bench-admin', 'admin'),
      queue,
      redis,
      pg,
      connections,
      settleTimeoutMs: cfg.SETTLE_TIMEOUT_MS,
      cpuClassifier: classifier(stack.mode === 'spawned' ? stack.pids : null, baseline ? [baseline.pid] : []),
    };

    process.stdout.write(
      `Flash sale: ${fmtInt(cfg.USERS)} users, ${fmtInt(cfg.STOCK)} coupons, ${connections} connections, ${cfg.RUNS} run(s) of ${cfg.MODES.join(' + ')}${baseline ? ` + baseline (${cfg.BASELINES.join(', ')})` : ''}, against a ${stack.mode} stack at ${stack.baseUrl}${stack.mode === 'spawned' ? ` (${cfg.WEBS} web(s), ${cfg.WORKERS} worker(s)${cfg.BRIDGE ? ', 1 bridge' : ''})` : ''}; ${cpus().length} CPUs, load average ${loadavg()
        .map((x) => round(x, 2))
        .join(' ')}\n`,
    );
    const warm = await warmUp(ctx, cfg, baseline);
    process.stdout.write(`${TABLE_HEADER}\n`);
    const runs: RunSales[] = [];
    for (let run = 1; run <= cfg.RUNS; run += 1) {
      if (run > 1) await sleep(2_000); // let the last run's tail (and the machine) quieten down
      runs.push(await measureRun(ctx, cfg, baseline, run));
    }

    const summary = summarize(cfg, runs, warm);
    const problems = stack.logProblems();
    if (Object.keys(problems.counts).length)
      summary.lines.push(
        `  service log: ${Object.entries(problems.counts)
          .map(([l, n]) => `${n} ${l}`)
          .join(', ')} line(s), e.g. ${problems.examples[0] ?? ''}`,
      );
    const report = {
      bench: 'flash-sale',
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      config: {
        ...cfg,
        JWT_SECRET: cfg.JWT_SECRET ? '[set]' : undefined,
        DATABASE_URL: databaseUrl.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@'),
        connections,
      },
      stack: {
        mode: stack.mode,
        baseUrl: stack.baseUrl,
        queuePrefix: stack.queuePrefix,
        workers: stack.mode === 'spawned' ? cfg.WORKERS : null,
        pids: stack.pids,
        logDir: stack.logDir ? path.relative(ROOT, stack.logDir) : null,
        logProblems: problems,
      },
      machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? null, loadavg: loadavg(), node: process.version },
      git: gitState(),
      bar: BAR,
      medians: summary.medians,
      bars: summary.bars,
      invariantsHeld: summary.held,
      warmUp: warm,
      runs,
    };
    summary.lines.push(writeResults('flash-sale', 'latest.json', startedAt, report));
    process.stdout.write(`${summary.lines.join('\n')}\n`);
    return summary.held ? 0 : 1;
  } finally {
    await stopAll();
  }
}

runBench(main);
