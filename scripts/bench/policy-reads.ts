// Policy-reads benchmark: READERS users read policies as fast as their rate limit allows (half
// `GET /coupons/policies?limit=100`, half `GET /coupons/policies/:id` of a policy with COUPONS
// coupons, among POLICIES policies), while VALIDATORS users call `POST /coupons/validate` in a loop.
// A policy read used to count the coupons of every policy it showed: a million of them took a
// connection for the better part of a second, ten users exhausted the web's pool and every route
// answered 503. Reported: validate p50/p95/p99, reads per second, 503s and other non-2xx answers.
//
// Usage:
//   npm run bench:policy-reads                   # the bar: 20 readers, 1,000,000 coupons, 30 s
//   RUNS=3 npm run bench:policy-reads            # three runs on one stack; medians reported
//
// Environment (defaults in brackets):
//   READERS [20]  VALIDATORS [4]  COUPONS [1000000]  POLICIES [100]  DURATION_S [30]  WARMUP_S [5]  RUNS [1]
//   READS_PER_S [50]    each reader's pace: the per-user limit (RATE_LIMIT_USER_POINTS) of the stack
//   VALIDATES_PER_S [40] each validator's pace (below the same limit)
//   WORKERS [1]  REDIS_URL [redis://127.0.0.1:6379]  BUILD [true]  LOG_LEVEL [warn]
//   DATABASE_URL [a scratch database, dropped at the end]
//
// The bench always starts a stack of its own (1 web, WORKERS workers, compiled JS) on a scratch
// database, and seeds the coupons straight into Postgres (one INSERT ... SELECT generate_series).
// Output: the summary on stdout, progress on stderr, the whole result as JSON in
// .data/bench/policy-reads-<timestamp>.json. Bar: validate p99 < 100 ms and no 503, in the median
// run and in every run. Exit code: 0 when the bar held, 1 when not, 2 when the bench could not run.
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import path from 'node:path';
import { Client as PgClient } from 'pg';
import { Agent } from 'undici';
import { z } from 'zod';
import { urlWith } from '../../src/core/config';
import { apiClient, createUnlimitedPolicy, type Call } from './api';
import { fmtInt, fmtMs, gitState, int, median, note, percentile, round, runBench, signer, sleep } from './common';
import { classifier, startCpuPhase, type CpuReport } from './cpu';
import { chooseStack, ROOT, type Stack } from './stack';

const configSchema = z.object({
  READERS: int(20),
  VALIDATORS: int(4),
  COUPONS: int(1_000_000),
  POLICIES: int(100),
  DURATION_S: int(30),
  WARMUP_S: int(5, 0),
  RUNS: int(1),
  READS_PER_S: int(50),
  VALIDATES_PER_S: int(40),
  WORKERS: int(1),
  DATABASE_URL: urlWith(['postgres:', 'postgresql:']).optional(),
  REDIS_URL: urlWith(['redis:', 'rediss:']).default('redis://127.0.0.1:6379'),
  BUILD: z.stringbool().default(true),
});
type Config = z.infer<typeof configSchema>;

const BAR = { validateP99Ms: 100, max503: 0 };

function loadConfig(): Config {
  const env = Object.fromEntries(Object.entries(process.env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = configSchema.safeParse(env);
  if (!parsed.success) {
    process.stderr.write(`invalid configuration:\n  ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('\n  ')}\n`);
    process.exit(2);
  }
  return parsed.data;
}

interface Tally {
  ok: number;
  s503: number;
  s429: number;
  other: Record<string, number>;
}
const tally = (): Tally => ({ ok: 0, s503: 0, s429: 0, other: {} });
function count(t: Tally, status: number): void {
  if (status >= 200 && status < 300) t.ok += 1;
  else if (status === 503) t.s503 += 1;
  else if (status === 429) t.s429 += 1;
  else t.other[String(status)] = (t.other[String(status)] ?? 0) + 1;
}

/** Calls `once` every 1000/perSecond ms (one at a time: a slow answer delays the next) until `until`. */
async function paced(perSecond: number, until: number, once: () => Promise<void>): Promise<void> {
  const every = 1000 / perSecond;
  // Spread the clients' starts over one period, so they do not all fire on the same tick.
  let next = performance.now() + Math.random() * every;
  while (performance.now() < until) {
    const wait = next - performance.now();
    if (wait > 0) await sleep(wait);
    next += every;
    await once();
    // Fell behind (slow answers): start again from now rather than sending a burst.
    if (performance.now() - next > every) next = performance.now();
  }
}

interface Run {
  run: number;
  seconds: number;
  reads: Tally & { perSecond: number };
  validates: Tally & { perSecond: number; p50Ms: number | null; p95Ms: number | null; p99Ms: number | null; maxMs: number | null };
  readLatency: { p50Ms: number | null; p99Ms: number | null };
  cpu: CpuReport;
}

async function measure(cfg: Config, stack: Stack, call: Call, seed: Seed, seconds: number, run: number): Promise<Run> {
  const reads = tally();
  const validates = tally();
  const validateMs: number[] = [];
  const readMs: number[] = [];
  const until = performance.now() + seconds * 1000;
  const endCpu = startCpuPhase(classifier(stack.pids));
  const started = performance.now();
  const readers = seed.readers.map((token, i) =>
    paced(cfg.READS_PER_S, until, async () => {
      const url = i % 2 === 0 ? '/api/v1/coupons/policies?limit=100' : `/api/v1/coupons/policies/${seed.bigPolicy}`;
      const t0 = performance.now();
      const reply = await call('GET', url, token).catch(() => ({ status: 0, body: undefined }));
      readMs.push(performance.now() - t0);
      count(reads, reply.status);
    }),
  );
  const validators = seed.validators.map((v) =>
    paced(cfg.VALIDATES_PER_S, until, async () => {
      const t0 = performance.now();
      const reply = await call('POST', '/api/v1/coupons/validate', v.token, { couponId: v.couponId, orderAmount: 50_000 }).catch(() => ({
        status: 0,
        body: undefined,
      }));
      validateMs.push(performance.now() - t0);
      count(validates, reply.status);
    }),
  );
  await Promise.all([...readers, ...validators]);
  const wall = (performance.now() - started) / 1000;
  const cpu = endCpu();
  validateMs.sort((a, b) => a - b);
  readMs.sort((a, b) => a - b);
  const p = (xs: number[], q: number) => {
    const v = percentile(xs, q);
    return v === null ? null : round(v, 1);
  };
  return {
    run,
    seconds: round(wall, 1),
    reads: { ...reads, perSecond: round(reads.ok / wall) },
    validates: {
      ...validates,
      perSecond: round(validates.ok / wall),
      p50Ms: p(validateMs, 50),
      p95Ms: p(validateMs, 95),
      p99Ms: p(validateMs, 99),
      maxMs: p(validateMs, 100),
    },
    readLatency: { p50Ms: p(readMs, 50), p99Ms: p(readMs, 99) },
    cpu,
  };
}

interface Seed {
  bigPolicy: string;
  readers: string[];
  validators: { token: string; couponId: string }[];
}

/** The big policy through the API, its coupons and the other policies straight into Postgres. */
async function seed(cfg: Config, call: Call, pg: PgClient, sign: ReturnType<typeof signer>): Promise<Seed> {
  const admin = await sign('bench-admin', 'admin');
  const bigPolicy = await createUnlimitedPolicy(call, admin, 'bench policy reads', { type: 'FIXED', value: 3_000, minOrderAmount: 10_000 });
  const t0 = Date.now();
  // One statement: the per-user guard (an advisory lock a row) stands aside in this scratch database.
  await pg.query('ALTER TABLE coupons DISABLE TRIGGER tg_coupons_enforce_limits');
  await pg.query(
    `INSERT INTO coupons (id, policy_id, user_id, request_id, expires_at)
     SELECT 'pr-' || g, $1, 'pr-u' || g, 'pr-r' || g, now() + interval '7 days' FROM generate_series(1, $2::int) g`,
    [bigPolicy, cfg.COUPONS],
  );
  await pg.query('ALTER TABLE coupons ENABLE TRIGGER tg_coupons_enforce_limits');
  // The rest of a catalogue, newer than the big policy (so a first page of 100 holds it last).
  await pg.query(
    `INSERT INTO coupon_policies (id, name, discount_type, discount_value, issue_method, issue_starts_at, valid_days, status)
     SELECT 'pr-p' || g, 'bench other ' || g, 'FIXED', 1000, 'DOWNLOAD', now() - interval '1 minute', 7, 'ACTIVE' FROM generate_series(1, $1::int) g`,
    [cfg.POLICIES - 1],
  );
  await pg.query('ANALYZE coupons, coupon_policies, policy_counters');
  note(`seeded ${fmtInt(cfg.COUPONS)} coupons and ${cfg.POLICIES - 1} other policies in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const readers = await Promise.all(Array.from({ length: cfg.READERS }, (_, i) => sign(`pr-reader-${i}`, 'user')));
  const validators = await Promise.all(
    Array.from({ length: cfg.VALIDATORS }, async (_, i) => ({ token: await sign(`pr-u${i + 1}`, 'user'), couponId: `pr-${i + 1}` })),
  );
  return { bigPolicy, readers, validators };
}

/** A stack of the bench's own, always: on a scratch database of a million coupons, not on a running stack's. */
function startStack(cfg: Config, tag: string, hooks: (() => Promise<void>)[]): Promise<{ stack: Stack; databaseUrl: string }> {
  return chooseStack({
    stack: 'spawn',
    databaseUrl: cfg.DATABASE_URL,
    redisUrl: cfg.REDIS_URL,
    build: cfg.BUILD,
    databaseTag: `policy_reads_${tag}`,
    spawn: { workers: cfg.WORKERS, queuePrefix: `bench-${tag}` },
    stopHooks: hooks,
    log: note,
  });
}

const line = (r: Run) =>
  `  run ${r.run}: validate p50 ${fmtMs(r.validates.p50Ms)} p95 ${fmtMs(r.validates.p95Ms)} p99 ${fmtMs(r.validates.p99Ms)} (${fmtInt(r.validates.perSecond)}/s); ` +
  `reads ${fmtInt(r.reads.perSecond)}/s (p50 ${fmtMs(r.readLatency.p50Ms)}, p99 ${fmtMs(r.readLatency.p99Ms)}); ` +
  `503: ${r.reads.s503 + r.validates.s503}; 429: ${r.reads.s429 + r.validates.s429}; other non-2xx: ${JSON.stringify({ ...r.reads.other, ...r.validates.other })}; ` +
  `CPU % web ${r.cpu.groupsPct.web} worker ${r.cpu.groupsPct.worker} postgres ${r.cpu.groupsPct.postgres} redis ${r.cpu.groupsPct.redis} bench ${r.cpu.groupsPct.bench} other ${r.cpu.groupsPct.other}`;

async function main(): Promise<number> {
  const cfg = loadConfig();
  const startedAt = new Date();
  const tag = randomBytes(4).toString('hex');
  const hooks: (() => Promise<void>)[] = [];
  const stopAll = async () => {
    for (const hook of hooks.splice(0).reverse()) await hook().catch((e: Error) => note(`cleanup: ${e.message}`));
  };
  process.once('SIGINT', () => void stopAll().finally(() => process.exit(130)));
  try {
    const { stack, databaseUrl } = await startStack(cfg, tag, hooks);
    const pg = new PgClient({ connectionString: databaseUrl, application_name: 'coupon-bench' });
    await pg.connect();
    const agent = new Agent({ connections: cfg.READERS + cfg.VALIDATORS + 8, pipelining: 1, keepAliveTimeout: 30_000 });
    hooks.push(async () => {
      await pg.end();
      await agent.close();
    });
    const call = apiClient(stack.baseUrl, agent);
    const data = await seed(cfg, call, pg, signer(stack.jwtSecret));
    const sample = await call('GET', `/api/v1/coupons/policies/${data.bigPolicy}`, await signer(stack.jwtSecret)('bench-admin', 'admin'));
    if (sample.body?.issuedCount !== cfg.COUPONS)
      throw new Error(`the policy reads issuedCount ${sample.body?.issuedCount}, not ${cfg.COUPONS}`);

    process.stdout.write(
      `Policy reads: ${cfg.READERS} readers at ${cfg.READS_PER_S}/s each (list of ${cfg.POLICIES} and one policy of ${fmtInt(cfg.COUPONS)} coupons), ` +
        `${cfg.VALIDATORS} validators at ${cfg.VALIDATES_PER_S}/s each, ${cfg.DURATION_S} s a run; 1 web, ${cfg.WORKERS} worker(s); ${cpus().length} CPUs, load average ${loadavg()
          .map((x) => round(x, 2))
          .join(' ')}\n`,
    );
    if (cfg.WARMUP_S > 0) {
      note(`warm-up: ${cfg.WARMUP_S} s`);
      await measure(cfg, stack, call, data, cfg.WARMUP_S, 0);
    }
    const runs: Run[] = [];
    for (let i = 1; i <= cfg.RUNS; i += 1) {
      note(`run ${i} of ${cfg.RUNS}: ${cfg.DURATION_S} s`);
      const r = await measure(cfg, stack, call, data, cfg.DURATION_S, i);
      runs.push(r);
      note(line(r));
    }
    const medians = {
      validateP50Ms: median(runs.map((r) => r.validates.p50Ms)),
      validateP95Ms: median(runs.map((r) => r.validates.p95Ms)),
      validateP99Ms: median(runs.map((r) => r.validates.p99Ms)),
      validatesPerSecond: median(runs.map((r) => r.validates.perSecond)),
      readsPerSecond: median(runs.map((r) => r.reads.perSecond)),
      readP99Ms: median(runs.map((r) => r.readLatency.p99Ms)),
    };
    const total503 = runs.reduce((n, r) => n + r.reads.s503 + r.validates.s503, 0);
    const passed =
      medians.validateP99Ms !== null &&
      medians.validateP99Ms < BAR.validateP99Ms &&
      runs.every((r) => (r.validates.p99Ms ?? Infinity) < BAR.validateP99Ms) &&
      total503 <= BAR.max503;
    const problems = stack.logProblems();
    const summary = [
      ...runs.map(line),
      `  medians of ${runs.length}: validate p50 ${fmtMs(medians.validateP50Ms)} p95 ${fmtMs(medians.validateP95Ms)} p99 ${fmtMs(medians.validateP99Ms)}; reads ${fmtInt(medians.readsPerSecond ?? 0)}/s (p99 ${fmtMs(medians.readP99Ms)})`,
      `  ${passed ? 'PASS' : 'FAIL'}  validate p99 < ${BAR.validateP99Ms} ms in every run, and no 503 (${total503} in all)`,
    ];
    if (Object.keys(problems.counts).length)
      summary.push(
        `  service log: ${Object.entries(problems.counts)
          .map(([l, n]) => `${n} ${l}`)
          .join(', ')} line(s), e.g. ${problems.examples[0] ?? ''}`,
      );
    const report = {
      bench: 'policy-reads',
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      config: { ...cfg, DATABASE_URL: databaseUrl.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@') },
      stack: {
        mode: stack.mode,
        baseUrl: stack.baseUrl,
        pids: stack.pids,
        logDir: stack.logDir ? path.relative(ROOT, stack.logDir) : null,
        logProblems: problems,
      },
      machine: { cpus: cpus().length, loadavg: loadavg(), node: process.version },
      git: gitState(),
      bar: BAR,
      medians,
      total503,
      passed,
      runs,
    };
    const dir = path.join(ROOT, '.data', 'bench');
    mkdirSync(dir, { recursive: true });
    const file = path.join(dir, `policy-reads-${startedAt.toISOString().replace(/:/g, '-')}.json`);
    writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
    summary.push(`Results: ${path.relative(ROOT, file)}`);
    process.stdout.write(`${summary.join('\n')}\n`);
    return passed ? 0 : 1;
  } finally {
    await stopAll();
  }
}

runBench(main);
