// Checkout benchmark: USERS shoppers, each holding one coupon, check out at RATE per second for
// DURATION_S seconds (an open loop: a new checkout starts on schedule whatever the earlier ones
// are doing). A checkout is: POST /coupons/reserve with an Idempotency-Key and `Prefer: wait=10`,
// which answers once the reservation exists (a 202 instead is long-polled), then publish PAYMENT_COMPLETED for the order on Kafka. The bridge turns
// the event into a job, a worker marks the coupon USED. Reported: reservations per second, reserve
// latency, the time from each event's publication to its coupon being USED, and an invariant check
// over Postgres. This file runs the bench (its configuration, the stack, the runs, the results file);
// checkout-load.ts is the open loop, checkout-run.ts one run (seed, load, settle, measure),
// checkout-audit.ts the invariants, checkout-report.ts the lines, medians and bar.
//
// Usage:
//   npm run bench:checkout                          # the bar: 1,000 checkouts/s for 30 s
//   RATE=1500 DURATION_S=60 npm run bench:checkout
//   RUNS=5 npm run bench:checkout                   # five measured runs on one stack; medians and how many met the bar
//   PROFILE=1 npm run bench:checkout                # web, workers and bridge under node --cpu-prof (.data/profiles)
//   CAPACITY=true npm run bench:checkout            # the highest rate, 100-1,000/s by 50, that holds the bar's p95 in 3 of 3 runs
//   BASE_URL=http://127.0.0.1:3000 JWT_SECRET=... npm run bench:checkout   # a running stack (npm start)
//
// Environment (defaults in brackets):
//   RATE [1000]  DURATION_S [30]  USERS [RATE x DURATION_S]  CONNECTIONS [256]  WORKERS [1]
//   STACK [auto]  BASE_URL [http://127.0.0.1:3000]  BUILD [true]  JWT_SECRET  (as for the flash-sale bench)
//   DATABASE_URL [reused stack: postgres://postgres@127.0.0.1:5432/coupons; spawned: a scratch one]
//   REDIS_URL [redis://127.0.0.1:6379]
//   KAFKA_BROKERS [127.0.0.1:9092]   a broker is started from the Maven jars when none answers
//   SETTLE_TIMEOUT_MS [60000]        how long to wait after the load for every event to be applied
//   WARMUP_S [5]                     seconds of unmeasured checkouts at RATE first (0: none)
//   RUNS [1]                         measured runs, each with its own shoppers; the bar is judged on the median
//   PROFILE [false]                  CPU profiles of the spawned web, workers and bridge in .data/profiles (written at stop)
//   CAPACITY [false]  FROM_RATE [100]  STEP [50]
//                                    search the rates FROM_RATE, FROM_RATE + STEP, ... up to RATE (bisection) for the
//                                    highest at which every one of RUNS [3] runs kept pace with p95 event → USED under
//                                    the bar (scripts/bench/checkout-capacity.ts); results in checkout-capacity-*.json
//   BASELINES [insert,admit]         after each measured run, the bare server (scripts/bench/checkout-baseline.ts) under the
//                                    same open loop at RATE: Hono + one Postgres INSERT, Hono + one Redis Lua script (none: skip)
//   BASELINE_S [10]                  seconds of each bare route; a checkout's service CPU is printed as a multiple of a bare request's
//   PAYMENT_APPLY [worker]           where the spawned stack applies payment events: worker (a job each) or bridge (in place)
//   LOG_LEVEL [warn]                 the spawned stack's log level (info: with the per-request lines)
//
// A spawned stack (1 web, WORKERS workers, 1 bridge) gets its own queue prefix, payments topic,
// consumer group and, unless DATABASE_URL is given, a scratch database dropped at the end. The coupons
// are written straight into Postgres (issuance is the flash-sale bench's subject).
//
// Output: a summary with PASS/FAIL lines on stdout, progress on stderr, and the whole result as JSON
// in bench/results/checkout-<timestamp>.json and bench/results/checkout-latest.json.
// Bar: >= 1,000 checkouts per second sustained for 30 s (offered by the open loop, every one finished,
// the last within a second of the load's end, so no backlog built up), p95 event → USED < 100 ms (scripts/bench/checkout-bar.ts).
// With RUNS > 1, the rate must be sustained in every run and the p95 is the median of the runs' p95s;
// the summary also says in how many runs each bar was met on its own.
// Invariants (every run and the warm-up): every checkout started was reserved and its coupon USED (a
// reserve refused at the door, 429/503/5xx, or failed counts against the run), one CONFIRMED
// reservation per used coupon, none reserved twice or left PENDING, each payment applied once.
// Exit code: 0 when the invariants held (a missed performance bar is a MISS line, not fatal), 1 when
// an invariant failed (a FAIL line), 2 when the bench could not run.
import { randomBytes } from 'node:crypto';
import { cpus, loadavg } from 'node:os';
import path from 'node:path';
import IORedis from 'ioredis';
import { Kafka, logLevel, Partitioners } from 'kafkajs';
import { Client as PgClient } from 'pg';
import { z } from 'zod';
import { urlWith } from '../../src/core/config';
import { fixKafkajsIdleLoop } from '../../src/bridge/kafkajs-idle';
import { consoleLogger } from '../infra/process';
import { ensureServices } from '../infra/services';
import { keepAliveClient } from './api';
import { KeepAlivePool } from './keep-alive';
import { startBaseline } from './baseline';
import { bareLines, bareRuns, bareSummary, checkoutServiceCpuMs, type BareContext, type BareResult } from './checkout-baseline';
import { eventPublisher } from './checkout-load';
import { classifier } from './cpu';
import { BAR } from './checkout-bar';
import { invariantGate, runLines, summarize } from './checkout-report';
import { capacityLines, findCapacity, judgeForCapacity, ratesOf, type CapacityPlan } from './checkout-capacity';
import { measureRun, warmUp, type CheckoutContext, type CheckoutRun } from './checkout-run';
import { fmtInt, gitState, int, list, note, round, runBench, signer, sleep, writeResults } from './common';
import { chooseStack, DEFAULT_DATABASE_URL, ROOT, waitForBridge, type Stack } from './stack';

const configSchema = z.object({
  BASE_URL: urlWith(['http:']).default('http://127.0.0.1:3000'),
  STACK: z.enum(['auto', 'reuse', 'spawn']).default('auto'),
  RATE: int(1_000),
  DURATION_S: int(30),
  USERS: z.coerce.number().int().min(1).optional(),
  CONNECTIONS: int(256),
  WORKERS: int(1),
  JWT_SECRET: z.string().min(32).optional(),
  DATABASE_URL: urlWith(['postgres:', 'postgresql:']).optional(),
  REDIS_URL: urlWith(['redis:', 'rediss:']).default('redis://127.0.0.1:6379'),
  KAFKA_BROKERS: z.string().default('127.0.0.1:9092'),
  BUILD: z.stringbool().default(true),
  SETTLE_TIMEOUT_MS: int(60_000, 1_000),
  // Seconds of unmeasured checkouts at RATE first (their own policy), so the measured load meets a
  // warmed-up service, as a real sale meets one that has been up for a while. 0 skips it.
  WARMUP_S: int(5, 0),
  // Measured runs (default 1); with CAPACITY, the runs a rate must hold in (default 3).
  RUNS: z.coerce.number().int().min(1).optional(),
  PROFILE: z.stringbool().default(false),
  // The capacity search (scripts/bench/checkout-capacity.ts): rates FROM_RATE, FROM_RATE + STEP, ... up to RATE.
  CAPACITY: z.stringbool().default(false),
  FROM_RATE: int(100),
  STEP: int(50),
  // The bare baseline after each measured run (checkout-baseline.ts): routes, and seconds each.
  BASELINES: list(['insert', 'admit'], 'insert,admit'),
  BASELINE_S: int(10),
  // Where the spawned stack applies payments (the service's PAYMENT_APPLY, passed on with the environment).
  PAYMENT_APPLY: z.enum(['worker', 'bridge']).default('worker'),
});
type Config = z.infer<typeof configSchema>;

function loadConfig(): Config {
  const env = Object.fromEntries(Object.entries(process.env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = configSchema.safeParse(env);
  if (!parsed.success) {
    process.stderr.write(`invalid configuration:\n  ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('\n  ')}\n`);
    process.exit(2);
  }
  return parsed.data;
}

async function main(): Promise<number> {
  const cfg = loadConfig();
  fixKafkajsIdleLoop(); // the bench's producer: without it the bench client would burn CPU idling
  const users = cfg.USERS ?? cfg.RATE * cfg.DURATION_S;
  const startedAt = new Date();
  const tag = randomBytes(4).toString('hex');
  const brokers = cfg.KAFKA_BROKERS.split(',').map((b) => b.trim());
  const stopHooks: (() => Promise<void>)[] = [];
  const stopAll = async () => {
    for (const hook of stopHooks.splice(0).reverse()) await hook().catch((e: Error) => note(`cleanup: ${e.message}`));
  };
  process.once('SIGINT', () => void stopAll().finally(() => process.exit(130)));

  try {
    const services = await ensureServices({
      databaseUrl: cfg.DATABASE_URL ?? DEFAULT_DATABASE_URL,
      redisUrl: cfg.REDIS_URL,
      kafkaBrokers: brokers,
      log: consoleLogger,
    });
    stopHooks.push(() => services.stop());

    // ---- the stack: a running one consumes payments.v1; a spawned one, a topic and group of its own ----
    const { stack, databaseUrl } = await chooseStack({
      stack: cfg.STACK,
      running: { baseUrl: cfg.BASE_URL, queuePrefix: 'coupon' },
      jwtSecret: cfg.JWT_SECRET,
      databaseUrl: cfg.DATABASE_URL,
      redisUrl: cfg.REDIS_URL,
      build: cfg.BUILD,
      databaseTag: `checkout_${tag}`,
      spawn: {
        workers: cfg.WORKERS,
        queuePrefix: `bench-${tag}`,
        bridge: true,
        profileDir: cfg.PROFILE ? path.join(ROOT, '.data', 'profiles') : undefined,
        env: { KAFKA_BROKERS: cfg.KAFKA_BROKERS, KAFKA_PAYMENTS_TOPIC: `payments.v1.bench-${tag}`, KAFKA_GROUP_ID: `bench-bridge-${tag}` },
      },
      stopHooks,
      log: note,
    });
    const topic = stack.mode === 'spawned' ? `payments.v1.bench-${tag}` : 'payments.v1';
    const groupId = stack.mode === 'spawned' ? `bench-bridge-${tag}` : 'coupon-bridge';
    note(`payments go to ${topic}, consumed by ${groupId}`);
    const kafka = new Kafka({ clientId: 'coupon-bench', brokers, logLevel: logLevel.NOTHING });
    await waitForBridge(kafka, groupId);
    const producer = kafka.producer({ allowAutoTopicCreation: false, createPartitioner: Partitioners.DefaultPartitioner });
    await producer.connect();
    const pg = new PgClient({ connectionString: databaseUrl, application_name: 'coupon-bench' });
    await pg.connect();
    // Plain keep-alive connections (keep-alive.ts): the generator shares the box with the service.
    const pool = new KeepAlivePool(new URL(stack.baseUrl), cfg.CONNECTIONS, 20_000);
    // What a checkout leaves in Redis (INFO memory before the load and after the settle).
    const redis = new IORedis(cfg.REDIS_URL, { maxRetriesPerRequest: 1 });
    stopHooks.push(async () => {
      await producer.disconnect();
      await pg.end();
      pool.close();
      redis.disconnect();
    });
    const sign = signer(stack.jwtSecret);

    process.stdout.write(
      `${cfg.CAPACITY ? `Checkout capacity: ${fmtInt(cfg.FROM_RATE)}-${fmtInt(cfg.RATE)} checkouts/s by ${fmtInt(cfg.STEP)}, runs of ${cfg.DURATION_S} s` : `Checkout: ${fmtInt(users)} shoppers, ${fmtInt(cfg.RATE)} checkouts/s for ${cfg.DURATION_S} s`}, against a ${stack.mode} stack at ${stack.baseUrl}${stack.mode === 'spawned' ? ` (1 web, ${cfg.WORKERS} worker(s), 1 bridge; payments applied by the ${cfg.PAYMENT_APPLY})` : ''}; ${cpus().length} CPUs, load average ${loadavg()
        .map((x) => round(x, 2))
        .join(' ')}\n`,
    );

    const ctx: CheckoutContext = {
      stack,
      call: keepAliveClient(pool),
      sign,
      adminToken: await sign('bench-admin', 'admin'),
      publisher: eventPublisher(producer, topic),
      pg,
      redis,
      rate: cfg.RATE,
      settleTimeoutMs: cfg.SETTLE_TIMEOUT_MS,
    };
    if (cfg.CAPACITY) return await searchCapacity(cfg, ctx, tag, { startedAt, topic, groupId, databaseUrl });

    // ---- warm-up: the service meets the measured load JIT-compiled and with open pools ----
    const warmInvariants = cfg.WARMUP_S > 0 ? await warmUp(ctx, `${tag}w`, cfg.WARMUP_S) : [];

    // ---- the measured runs: each its own shoppers and policy, then the bare baseline at its rate ----
    const bare = cfg.BASELINES.length ? await bareContext(cfg, ctx, stopHooks) : null;
    const runs: (CheckoutRun & { checkoutMs: number | null; bare: BareResult[] })[] = [];
    const runCount = cfg.RUNS ?? 1;
    for (let run = 1; run <= runCount; run += 1) {
      if (run > 1) await sleep(2_000); // let the last run's tail (and the machine) quieten down
      const label = `${tag}r${run}`;
      const measured = await measureRun(ctx, { run, runs: runCount, label, users, durationS: cfg.DURATION_S });
      const bares = bare ? await bareRuns(bare, cfg.BASELINES, cfg.RATE, cfg.BASELINE_S, label) : [];
      const checkoutMs = checkoutServiceCpuMs(measured.measure.cpuMsPerCheckout);
      process.stdout.write(`${[...runLines(measured, runCount), ...bareLines(checkoutMs, bares)].join('\n')}\n`);
      runs.push({ ...measured, checkoutMs, bare: bares });
    }

    // ---- medians, the bar and the invariants ----
    const problems = stack.logProblems();
    const {
      lines: summary,
      medians,
      bars,
      invariantsHeld,
    } = summarize({
      rate: cfg.RATE,
      warmUpS: cfg.WARMUP_S,
      runs,
      warmInvariants,
      publishErrors: ctx.publisher.errors,
      problems,
      medianLines: bareSummary(runs),
    });
    const report = {
      ...reportHeader(cfg, ctx.stack, { startedAt, databaseUrl, topic, groupId, users }),
      bar: BAR,
      // The same shape for any RUNS: every run with its numbers and invariants, and their medians.
      medians,
      bars,
      invariantsHeld,
      warmUpInvariants: warmInvariants,
      runs,
    };
    summary.push(writeResults('checkout', 'checkout-latest.json', startedAt, report));
    process.stdout.write(`${summary.join('\n')}\n`);
    return invariantsHeld ? 0 : 1;
  } finally {
    await stopAll();
  }
}

/** The bare server, started beside the stack for the whole bench, and what a bare run needs. */
async function bareContext(cfg: Config, ctx: CheckoutContext, stopHooks: (() => Promise<void>)[]): Promise<BareContext> {
  const baseline = await startBaseline({ redisUrl: cfg.REDIS_URL, log: note });
  // Its own connections, of the same kind as the checkouts' (a pool serves one server).
  const pool = new KeepAlivePool(new URL(baseline.baseUrl), cfg.CONNECTIONS, 20_000);
  stopHooks.push(async () => {
    pool.close();
    await baseline.stop();
  });
  const classify = classifier(ctx.stack.mode === 'spawned' ? ctx.stack.pids : null, [baseline.pid]);
  return { baseline, call: keepAliveClient(pool), pg: ctx.pg, sign: ctx.sign, classify };
}

interface RunMeta {
  startedAt: Date;
  databaseUrl: string;
  topic: string;
  groupId: string;
  users?: number;
}

/** What every results file of this bench opens with: when, the configuration, the stack, the machine, the code. */
function reportHeader(cfg: Config, stack: Stack, meta: RunMeta) {
  return {
    bench: 'checkout',
    startedAt: meta.startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    config: {
      ...cfg,
      JWT_SECRET: cfg.JWT_SECRET ? '[set]' : undefined,
      DATABASE_URL: meta.databaseUrl.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@'),
      users: meta.users,
      topic: meta.topic,
      groupId: meta.groupId,
    },
    stack: {
      mode: stack.mode,
      baseUrl: stack.baseUrl,
      queuePrefix: stack.queuePrefix,
      pids: stack.pids,
      logDir: stack.logDir ? path.relative(ROOT, stack.logDir) : null,
      logProblems: stack.logProblems(),
    },
    machine: { cpus: cpus().length, loadavg: loadavg(), node: process.version },
    git: gitState(),
  };
}

/**
 * CAPACITY=true: the highest rate from FROM_RATE to RATE, by STEP, that holds the bar's latency in
 * every one of RUNS (default 3) runs (scripts/bench/checkout-capacity.ts). Each run has its own
 * shoppers (USERS, else rate x DURATION_S); the warm-up runs at FROM_RATE. The exit code is the
 * invariant gate, as for any run of this bench.
 */
async function searchCapacity(cfg: Config, ctx: CheckoutContext, tag: string, meta: RunMeta): Promise<number> {
  const plan: CapacityPlan = { from: cfg.FROM_RATE, to: cfg.RATE, step: cfg.STEP, runsPerRate: cfg.RUNS ?? 3 };
  const rates = ratesOf(plan);
  note(
    `capacity search over ${rates.length} rates, ${fmtInt(plan.from)}-${fmtInt(rates.at(-1) ?? plan.to)} checkouts/s, ${plan.runsPerRate} run(s) each`,
  );
  ctx.rate = plan.from;
  const warmInvariants = cfg.WARMUP_S > 0 ? await warmUp(ctx, `${tag}w`, cfg.WARMUP_S) : [];
  const runs: (CheckoutRun & { rate: number })[] = [];
  const result = await findCapacity(plan, async (rate, run) => {
    if (runs.length > 0) await sleep(2_000);
    ctx.rate = rate;
    const label = `${tag}c${runs.length + 1}`;
    const measured = await measureRun(ctx, {
      run: runs.length + 1,
      runs: 0,
      label,
      users: cfg.USERS ?? rate * cfg.DURATION_S,
      durationS: cfg.DURATION_S,
    });
    const verdict = judgeForCapacity(measured);
    process.stdout.write(
      `${runLines(measured, 0).join('\n')}\n  => ${fmtInt(rate)}/s, run ${run} of ${plan.runsPerRate}: ${verdict.held ? 'held' : 'missed'}\n`,
    );
    runs.push({ ...measured, rate });
    return verdict;
  });
  const invariants = invariantGate(cfg.WARMUP_S, runs, warmInvariants);
  const summary = [...capacityLines(plan, result, cfg.DURATION_S, BAR.p95EventToUsedMs), ...invariants.lines];
  const report = {
    ...reportHeader(cfg, ctx.stack, meta),
    bar: BAR,
    capacity: { plan, ...result },
    invariantsHeld: invariants.held,
    warmUpInvariants: warmInvariants,
    runs,
  };
  summary.push(writeResults('checkout-capacity', 'checkout-capacity-latest.json', meta.startedAt, report));
  process.stdout.write(`${summary.join('\n')}\n`);
  return invariants.held ? 0 : 1;
}

runBench(main);
