// Flash-sale benchmark: USERS distinct users each ask once for a coupon of one FIRST_COME policy
// with STOCK coupons, as fast as CONNECTIONS keep-alive connections allow; then it waits for every
// job to settle and checks the outcome in Redis, Postgres and through the API.
//
// Usage:
//   npm run bench                              # the bar: 20,000 users, 2,000 coupons, 100 connections
//   RUNS=5 npm run bench                       # five runs (a fresh policy each), medians reported
//   STACK=spawn WORKERS=4 npm run bench        # always start a stack of its own, with 4 workers
//   BASE_URL=http://127.0.0.1:3000 JWT_SECRET=... npm run bench   # a stack that is already running
//
// Environment (defaults in brackets):
//   BASE_URL [http://127.0.0.1:3000]  where the service is; when GET /health/ready does not answer 200
//                                     there (and STACK=auto), the bench runs `npm run build` and starts
//                                     1 web + WORKERS workers from the Procfile on a free port, and stops
//                                     them (SIGTERM) at the end.
//   STACK [auto]                      auto | reuse (fail if BASE_URL is not ready) | spawn (always start one)
//   USERS [20000]  STOCK [2000]  CONNECTIONS [100]  RUNS [1]  WORKERS [1] (spawned stack only)
//   WARMUP [10000]                     requests of an unmeasured sale before the runs (0: none)
//   JWT_SECRET                        reused stack: this, else JWT_SECRET=... from .data/dev-secrets.env
//                                     (written by `npm start`); spawned stack: this, else a random one
//   DATABASE_URL [reused stack: postgres://postgres@127.0.0.1:5432/coupons; spawned: a scratch one]
//   REDIS_URL [redis://127.0.0.1:6379]
//   QUEUE_PREFIX                      BullMQ prefix of the stack: [coupon] for a reused stack; a spawned
//                                     stack gets a fresh bench-<random> one (removed at the end) so no
//                                     other worker on this machine takes its jobs
//   BUILD [true]                      false: start the spawned stack from the existing dist/
//   LOG_LEVEL [warn]                  the spawned stack's log level (info: with the per-request lines)
//   REQUEST_TIMEOUT_S [10]  SETTLE_TIMEOUT_MS [120000]  SAMPLE_JOBS [100] (job ids read back over HTTP)
//
// A spawned stack runs on a scratch database of its own, dropped at the end, unless DATABASE_URL is
// given; against a running stack each run leaves its policy ("bench flash sale <tag>") and its coupons
// in that stack's database, like any other sale.
//
// Output: a summary with a PASS/FAIL line per bar item on stdout, progress on stderr, and the whole
// result as JSON in bench/results/flash-sale-<timestamp>.json and bench/results/latest.json.
// Bar: >= 5,000 accepted req/s, p99 accept latency < 100 ms, every job settled within 10 s of the
// last response, exactly STOCK coupons.
// Exit code: 0 when every invariant held in every run (a missed performance bar is reported, not
// fatal), 1 when an invariant failed, 2 when the bench could not run.
import { randomBytes, randomUUID } from 'node:crypto';
import { cpus, loadavg } from 'node:os';
import path from 'node:path';
import autocannon from 'autocannon';
import { Job, Queue } from 'bullmq';
import IORedis from 'ioredis';
import { Client as PgClient } from 'pg';
import { z } from 'zod';
import { urlWith } from '../../core/config';
import { mapLimit } from '../../core/concurrency';
import { parseRequestId } from '../../queues/names';
import { fmtInt, fmtMs, gitState, median, note, round, runBench, signer, sleep, wallNow, writeResults } from './common';
import { classifier, startCpuPhase, type CpuReport } from './cpu';
import { benchDatabase, buildProject, DEFAULT_DATABASE_URL, isReady, reuseStack, ROOT, secretForRunningStack, spawnStack, type Stack } from './stack';

// ---------------------------------------------------------------------------------------------
// Configuration

const int = (def: number, min = 1) => z.coerce.number().int().min(min).default(def);

const configSchema = z.object({
  BASE_URL: urlWith(['http:']).default('http://127.0.0.1:3000'),
  STACK: z.enum(['auto', 'reuse', 'spawn']).default('auto'),
  USERS: int(20_000),
  STOCK: int(2_000),
  CONNECTIONS: int(100),
  RUNS: int(1),
  // One worker process: on 2 cores a second one adds context switches and smaller batches, not throughput.
  WORKERS: int(1),
  JWT_SECRET: z.string().min(32, 'must be at least 32 characters (HS256 key)').optional(),
  DATABASE_URL: urlWith(['postgres:', 'postgresql:']).optional(),
  REDIS_URL: urlWith(['redis:', 'rediss:']).default('redis://127.0.0.1:6379'),
  QUEUE_PREFIX: z.string().min(1).optional(),
  BUILD: z.stringbool().default(true),
  REQUEST_TIMEOUT_S: int(10),
  SETTLE_TIMEOUT_MS: int(120_000, 1_000),
  SAMPLE_JOBS: int(100, 0),
  // Requests of an unmeasured sale first, so the runs meet JIT-compiled processes and open pools,
  // as a real sale meets a service that has been up for a while. 0 skips it.
  WARMUP: int(10_000, 0),
});
type Config = z.infer<typeof configSchema>;

const BAR = { acceptedRps: 5_000, p99Ms: 100, settleMs: 10_000 };
const ISSUE_QUEUE = 'issue';
const LIVE_STATES = ['waiting', 'active', 'delayed', 'prioritized', 'waiting-children'] as const;

function loadConfig(): Config {
  // Empty strings count as unset, like core/config.ts.
  const env = Object.fromEntries(Object.entries(process.env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = configSchema.safeParse(env);
  if (!parsed.success) {
    process.stderr.write(`invalid configuration:\n  ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('\n  ')}\n`);
    process.exit(2);
  }
  return parsed.data;
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/** autocannon's own latency histogram type, built the way autocannon builds it, but kept alive after the run. */
function latencyHistogram(): autocannon.Histogram {
  const hdrPath = require.resolve('hdr-histogram-js', { paths: [path.dirname(require.resolve('autocannon'))] });
  const hdr = require(hdrPath) as { build(opts: object): autocannon.Histogram };
  // Same settings as autocannon's lib/histUtil.js, in plain JS (its destroy() is a no-op, so the
  // histogram can still be read after autocannon "destroys" it at the end of the run).
  return hdr.build({
    useWebAssembly: false,
    bitBucketSize: 64,
    autoResize: true,
    lowestDiscernibleValue: 1,
    highestTrackableValue: 10_000,
    numberOfSignificantValueDigits: 5,
  });
}

async function http(baseUrl: string, method: string, urlPath: string, token: string, body?: unknown) {
  const res = await fetch(new URL(urlPath, baseUrl), {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(15_000),
  });
  const text = await res.text();
  let json: any;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = text;
  }
  return { status: res.status, body: json };
}

// ---------------------------------------------------------------------------------------------
// Queue backlog, watched from the start of the load until every job has settled

interface BacklogSample {
  sentAt: number;
  gotAt: number;
  live: number;
}

class BacklogWatcher {
  private samples: BacklogSample[] = [];
  private stopped = false;
  private loop: Promise<void> | undefined;
  peak = { live: 0, atMs: 0 };
  errors = 0;

  constructor(
    private readonly queue: Queue,
    private readonly origin: number,
    private readonly everyMs = 20,
  ) {}

  start(): void {
    this.loop = (async () => {
      while (!this.stopped) {
        const sentAt = performance.now();
        try {
          const counts = await this.queue.getJobCounts(...LIVE_STATES);
          const live = Object.values(counts).reduce((a, b) => a + b, 0);
          const gotAt = performance.now();
          this.samples.push({ sentAt, gotAt, live });
          if (live > this.peak.live) this.peak = { live, atMs: round(gotAt - this.origin) };
        } catch {
          this.errors += 1;
        }
        await sleep(this.everyMs);
      }
    })();
  }

  /** The first moment, read after `after`, at which nothing was waiting, active or delayed. */
  async settledAfter(after: number, timeoutMs: number): Promise<number | null> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const hit = this.samples.find((s) => s.sentAt >= after && s.live === 0);
      if (hit) return hit.gotAt;
      if (performance.now() > deadline) return null;
      await sleep(this.everyMs);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }
}

// ---------------------------------------------------------------------------------------------
// One run

interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

interface RunResult {
  run: number;
  policyId: string;
  startedAt: string;
  load: {
    durationMs: number;
    requests: number;
    responses: number;
    statusCounts: Record<string, number>;
    errors: number;
    timeouts: number;
    accepted: number;
    acceptedRps: number;
    responsesRps: number;
    latencyMs: { p50: number; p90: number; p95: number; p99: number; max: number; mean: number; count: number };
    nonAcceptedExamples: Record<string, string>;
    timeline: { second: number; responses: number; accepted: number; over100ms: number; maxMs: number }[];
    autocannon: { duration: number; latency: autocannon.HistogramSummary; requests: autocannon.HistogramSummary };
  };
  backlog: { peakLive: number; peakAtMs: number; pollErrors: number };
  settle: { settled: boolean; settleMs: number | null; lastFinishedAfterLastResponseMs: number | null };
  jobs: {
    withJobId: number;
    succeeded: number;
    rejected: Record<string, number>;
    failed: number;
    unsettled: number;
    missing: number;
    retried: number;
    failedCountDelta: number;
    failedExamples: string[];
  };
  coupons: {
    count: number;
    distinctUsers: number;
    distinctSlots: number;
    minSlot: number | null;
    maxSlot: number | null;
    foreignHolders: number;
    firstIssuedAt: string | null;
    lastIssuedAt: string | null;
    issuingMs: number | null;
    issuedPerSec: number | null;
    soldOutAfterLoadStartMs: number | null;
  };
  sample: { checked: number; agreed: number; problems: string[] };
  cpu: {
    load: CpuReport;
    settle: CpuReport;
    /** CPU milliseconds per request over load + settle (web per HTTP answer, the rest per job). */
    msPerRequest: { web: number | null; worker: number | null; redis: number | null; postgres: number | null; bench: number | null };
  };
  invariants: Check[];
  invariantsHeld: boolean;
}

interface Ctx {
  cfg: Config;
  stack: Stack;
  sign: (sub: string, role: 'user' | 'admin') => Promise<string>;
  adminToken: string;
  queue: Queue;
  pg: PgClient;
  connections: number;
}

async function runOnce(ctx: Ctx, index: number): Promise<RunResult> {
  const { cfg, stack } = ctx;
  const tag = `${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;

  // A fresh policy, so every run starts from a full stock and no user has a coupon yet.
  const created = await http(stack.baseUrl, 'POST', '/api/v1/coupons/policies', ctx.adminToken, {
    name: `bench flash sale ${tag}`,
    description: 'created by scripts/bench/flash-sale.ts',
    discount: { type: 'FIXED', value: 1000 },
    issueMethod: 'FIRST_COME',
    totalQuantity: cfg.STOCK,
    perUserLimit: 1,
    issueWindow: { startsAt: new Date(Date.now() - 60_000).toISOString() },
    validity: { days: 7 },
  });
  if (created.status === 401) throw new Error(`the stack refused the admin token (401): JWT_SECRET is not the one ${stack.baseUrl} uses`);
  if (created.status !== 201) throw new Error(`creating the policy answered ${created.status}: ${JSON.stringify(created.body)}`);
  const policyId = String(created.body.id);

  // Every user's token is signed before the clock starts.
  const userPrefix = `bench-${tag}-`;
  const users = Array.from({ length: cfg.USERS }, (_, i) => `${userPrefix}${i}`);
  const signStart = performance.now();
  const tokens = await Promise.all(users.map((u) => ctx.sign(u, 'user')));
  const authHeaders = tokens.map((t) => `Bearer ${t}`);
  note(`run ${index}: policy ${policyId}; ${fmtInt(cfg.USERS)} tokens signed in ${fmtMs(performance.now() - signStart)}`);

  const failedBefore = (await ctx.queue.getJobCounts('failed')).failed ?? 0;
  const cpuClassifier = classifier(stack.mode === 'spawned' ? stack.pids : null);

  // ---- load ----
  const histogram = latencyHistogram();
  const jobIds: (string | undefined)[] = new Array(cfg.USERS);
  const statusCounts: Record<string, number> = {};
  const nonAcceptedExamples: Record<string, string> = {};
  let nextUser = 0;
  let responses = 0;
  let lastResponseAt = 0;
  let lastResponseWall = 0;
  // Per second of the load: how many answers, and how many of them were slow.
  const timeline: { second: number; responses: number; accepted: number; over100ms: number; maxMs: number }[] = [];

  const endLoadCpu = startCpuPhase(cpuClassifier);
  const loadStart = performance.now();
  const loadStartWall = wallNow();
  const watcher = new BacklogWatcher(ctx.queue, loadStart);
  watcher.start();
  const result = await new Promise<autocannon.Result>((resolveRun, reject) => {
    const instance = autocannon(
      {
        url: stack.baseUrl,
        connections: ctx.connections,
        pipelining: 1,
        amount: cfg.USERS,
        timeout: cfg.REQUEST_TIMEOUT_S,
        // Only 2xx answers go into the latency histogram: it is the accept latency.
        excludeErrorStats: true,
        histograms: { latencies: histogram },
        requests: [
          {
            method: 'POST',
            path: '/api/v1/coupons/issue',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ policyId }),
            setupRequest: (request, context) => {
              // Called once per request sent: each gets the next user's token.
              const user = nextUser++ % cfg.USERS;
              context.user = user;
              request.headers = { ...request.headers, authorization: authHeaders[user] as string };
              return request;
            },
            onResponse: (status, body, context) => {
              const user = context.user as number;
              if (status === 202) {
                const jobId = /"jobId":"([^"]+)"/.exec(body)?.[1];
                if (jobId) jobIds[user] = jobId;
              } else if (!(status in nonAcceptedExamples)) {
                nonAcceptedExamples[status] = body.slice(0, 300);
              }
            },
          },
        ],
      },
      (error, res) => (error ? reject(error) : resolveRun(res)),
    );
    instance.on('response', (_client: unknown, status: number, _bytes: number, responseTime: number) => {
      responses += 1;
      statusCounts[status] = (statusCounts[status] ?? 0) + 1;
      lastResponseAt = performance.now();
      lastResponseWall = wallNow();
      const second = Math.floor((lastResponseAt - loadStart) / 1000);
      const slot = (timeline[second] ??= { second, responses: 0, accepted: 0, over100ms: 0, maxMs: 0 });
      slot.responses += 1;
      if (status === 202) slot.accepted += 1;
      if (responseTime >= 100) slot.over100ms += 1;
      slot.maxMs = Math.max(slot.maxMs, round(responseTime, 1));
    });
  });
  const loadCpu = endLoadCpu();
  if (lastResponseAt === 0) lastResponseAt = performance.now();
  const durationMs = lastResponseAt - loadStart;
  const accepted = statusCounts['202'] ?? 0;
  note(`run ${index}: ${fmtInt(responses)} responses in ${fmtMs(durationMs)}; waiting for the jobs to settle`);

  // ---- settle ----
  const endSettleCpu = startCpuPhase(cpuClassifier);
  const settledAt = await watcher.settledAfter(lastResponseAt, cfg.SETTLE_TIMEOUT_MS);
  await watcher.stop();
  const settleCpu = endSettleCpu();
  const settleMs = settledAt === null ? null : settledAt - lastResponseAt;
  const failedAfter = (await ctx.queue.getJobCounts('failed')).failed ?? 0;

  // ---- every job of the run, read back from Redis ----
  const ids = jobIds.map((id, user) => ({ id, user })).filter((x): x is { id: string; user: number } => x.id !== undefined);
  const jobs = { withJobId: ids.length, succeeded: 0, rejected: {} as Record<string, number>, failed: 0, unsettled: 0, missing: 0, retried: 0, failedCountDelta: failedAfter - failedBefore, failedExamples: [] as string[] };
  const redisStatus = new Map<string, { status: string; couponId?: string; code?: string }>();
  const succeededCoupons = new Set<string>();
  let lastFinishedOn = 0;
  // Requests travel in batch jobs (`<jobId>.<index>`): read each job once, then each request's result in it.
  const batchJobs = new Map<string, Promise<Job | undefined>>();
  const jobOf = (jobId: string) => {
    let found = batchJobs.get(jobId);
    if (!found) {
      found = Job.fromId(ctx.queue, jobId);
      batchJobs.set(jobId, found);
    }
    return found;
  };
  const countedRetries = new Set<string>();
  await mapLimit(ids, 500, async ({ id }) => {
    const { jobId, index } = parseRequestId(id);
    const job = await jobOf(jobId);
    if (!job) {
      jobs.missing += 1;
      redisStatus.set(id, { status: 'missing' });
      return;
    }
    if (job.attemptsStarted > 1 && !countedRetries.has(jobId)) {
      countedRetries.add(jobId); // started more than once: retried or stalled
      jobs.retried += 1;
    }
    if (job.finishedOn) lastFinishedOn = Math.max(lastFinishedOn, job.finishedOn);
    const value: unknown = index === null ? job.returnvalue : (job.returnvalue as { results?: unknown[] } | null)?.results?.[index];
    const outcome = value as { outcome?: string; result?: { id?: string }; reason?: { code?: string } } | null | undefined;
    if (job.finishedOn && outcome?.outcome === 'succeeded') {
      jobs.succeeded += 1;
      if (outcome.result?.id) succeededCoupons.add(outcome.result.id);
      redisStatus.set(id, { status: 'succeeded', couponId: outcome.result?.id });
    } else if (job.finishedOn && outcome?.outcome === 'rejected') {
      const code = outcome.reason?.code ?? 'UNKNOWN';
      jobs.rejected[code] = (jobs.rejected[code] ?? 0) + 1;
      redisStatus.set(id, { status: 'rejected', code });
    } else if (job.finishedOn) {
      jobs.failed += 1;
      if (jobs.failedExamples.length < 5) jobs.failedExamples.push(`${id}: ${job.failedReason}`);
      redisStatus.set(id, { status: 'failed' });
    } else {
      jobs.unsettled += 1;
      redisStatus.set(id, { status: 'pending' });
    }
  });

  // ---- Postgres ----
  const { rows } = await ctx.pg.query(
    `SELECT count(*)::int AS count, count(DISTINCT user_id)::int AS users, count(DISTINCT slot)::int AS slots,
            min(slot) AS min_slot, max(slot) AS max_slot,
            count(*) FILTER (WHERE user_id NOT LIKE $2)::int AS foreign_holders,
            min(issued_at) AS first, max(issued_at) AS last
       FROM coupons WHERE policy_id = $1`,
    [policyId, `${userPrefix}%`],
  );
  const row = rows[0] as { count: number; users: number; slots: number; min_slot: number | null; max_slot: number | null; foreign_holders: number; first: Date | null; last: Date | null };
  const doubles = await ctx.pg.query(
    'SELECT user_id, count(*)::int AS n FROM coupons WHERE policy_id = $1 GROUP BY user_id HAVING count(*) > 1 LIMIT 5',
    [policyId],
  );
  const couponIds = new Set((await ctx.pg.query('SELECT id FROM coupons WHERE policy_id = $1', [policyId])).rows.map((r: { id: string }) => r.id));
  const issuingMs = row.first && row.last ? row.last.getTime() - row.first.getTime() : null;
  const coupons = {
    count: row.count,
    distinctUsers: row.users,
    distinctSlots: row.slots,
    minSlot: row.min_slot,
    maxSlot: row.max_slot,
    foreignHolders: row.foreign_holders,
    firstIssuedAt: row.first?.toISOString() ?? null,
    lastIssuedAt: row.last?.toISOString() ?? null,
    issuingMs,
    issuedPerSec: issuingMs && issuingMs > 0 ? round((row.count / issuingMs) * 1000) : null,
    soldOutAfterLoadStartMs: row.last ? round(row.last.getTime() - loadStartWall) : null,
  };

  // ---- a sample of jobs, read back through the API with their owners' tokens ----
  const sample = { checked: 0, agreed: 0, problems: [] as string[] };
  const picks = [...ids].sort(() => Math.random() - 0.5).slice(0, cfg.SAMPLE_JOBS);
  // Winners are rare among 20,000: make sure some are in the sample.
  const winners = ids.filter(({ id }) => redisStatus.get(id)?.status === 'succeeded').slice(0, Math.ceil(cfg.SAMPLE_JOBS / 5));
  const sampled = [...new Map([...winners, ...picks].map((x) => [x.id, x])).values()].slice(0, Math.max(cfg.SAMPLE_JOBS, winners.length));
  await mapLimit(sampled, 10, async ({ id, user }) => {
    sample.checked += 1;
    const reply = await http(stack.baseUrl, 'GET', `/api/v1/jobs/${id}`, tokens[user] as string).catch((e: Error) => ({ status: 0, body: e.message }));
    const seen = redisStatus.get(id);
    const view = reply.body as { status?: string; result?: { id?: string }; reason?: { code?: string } };
    const problem =
      reply.status !== 200
        ? `HTTP ${reply.status} ${JSON.stringify(reply.body).slice(0, 200)}`
        : view.status !== 'succeeded' && view.status !== 'rejected'
          ? `status ${view.status}`
          : view.status !== seen?.status
            ? `API says ${view.status}, Redis says ${seen?.status}`
            : view.status === 'succeeded' && view.result?.id !== seen.couponId
              ? `coupon ${view.result?.id} != ${seen.couponId}`
              : view.status === 'rejected' && view.reason?.code !== seen.code
                ? `reason ${view.reason?.code} != ${seen.code}`
                : null;
    if (problem) {
      if (sample.problems.length < 10) sample.problems.push(`${id}: ${problem}`);
    } else sample.agreed += 1;
  });

  // ---- invariants ----
  const lost = (result.errors ?? 0) + (result.timeouts ?? 0);
  const expectedLow = Math.min(cfg.STOCK, accepted);
  const expectedHigh = Math.min(cfg.STOCK, accepted + lost);
  const refusalCodes = Object.keys(jobs.rejected);
  const sameIds = couponIds.size === succeededCoupons.size && [...couponIds].every((id) => succeededCoupons.has(id));
  const invariants: Check[] = [
    {
      name: `exactly ${expectedLow === expectedHigh ? expectedLow : `${expectedLow}..${expectedHigh}`} coupons (I1, I3)`,
      ok: coupons.count >= expectedLow && coupons.count <= expectedHigh,
      detail: `${coupons.count} coupons for ${fmtInt(accepted)} accepted requests and stock ${cfg.STOCK}`,
    },
    {
      name: 'no user holds two (I2)',
      ok: coupons.distinctUsers === coupons.count && doubles.rows.length === 0,
      detail: doubles.rows.length ? `e.g. ${doubles.rows.map((r: { user_id: string; n: number }) => `${r.user_id}×${r.n}`).join(', ')}` : `${coupons.distinctUsers} holders`,
    },
    {
      name: 'slots distinct and within 1..STOCK',
      ok: coupons.distinctSlots === coupons.count && (coupons.count === 0 || ((coupons.minSlot ?? 0) >= 1 && (coupons.maxSlot ?? Infinity) <= cfg.STOCK)),
      detail: `${coupons.distinctSlots} distinct slots in ${coupons.minSlot ?? '-'}..${coupons.maxSlot ?? '-'}`,
    },
    {
      name: 'holders are this run\'s users',
      ok: coupons.foreignHolders === 0,
      detail: `${coupons.foreignHolders} coupons held by someone else`,
    },
    {
      name: 'every 202 carried a job id',
      ok: jobs.withJobId === accepted,
      detail: `${fmtInt(jobs.withJobId)} job ids for ${fmtInt(accepted)} answers 202`,
    },
    {
      name: 'every job settled (I7)',
      ok: settledAt !== null && jobs.unsettled === 0 && jobs.missing === 0,
      detail: settledAt === null ? `queue not empty after ${fmtMs(cfg.SETTLE_TIMEOUT_MS)}` : `${jobs.unsettled} pending, ${jobs.missing} missing`,
    },
    {
      name: 'no job failed',
      ok: jobs.failed === 0,
      detail: `${jobs.failed} of this run's jobs failed${jobs.failedExamples.length ? `: ${jobs.failedExamples.join('; ')}` : ''} (queue failed count +${jobs.failedCountDelta})`,
    },
    {
      name: 'succeeded jobs are exactly the coupons',
      ok: jobs.succeeded === coupons.count && sameIds,
      detail: `${jobs.succeeded} succeeded jobs, ${coupons.count} coupon rows, ids ${sameIds ? 'match' : 'differ'}`,
    },
    {
      name: 'every refusal is SOLD_OUT',
      ok: refusalCodes.every((c) => c === 'SOLD_OUT'),
      detail: refusalCodes.length ? refusalCodes.map((c) => `${c} ${jobs.rejected[c]}`).join(', ') : 'no refusals',
    },
    {
      name: 'sampled jobs read back as succeeded/rejected',
      ok: sample.problems.length === 0 && sample.agreed === sample.checked,
      detail: `${sample.agreed}/${sample.checked} agree${sample.problems.length ? `: ${sample.problems.slice(0, 3).join('; ')}` : ''}`,
    },
  ];

  const latencyMs = {
    p50: histogram.getValueAtPercentile(50),
    p90: histogram.getValueAtPercentile(90),
    p95: histogram.getValueAtPercentile(95),
    p99: histogram.getValueAtPercentile(99),
    max: round(histogram.maxValue, 1),
    mean: round(histogram.mean, 2),
    count: histogram.totalCount,
  };

  return {
    run: index,
    policyId,
    startedAt: new Date(loadStartWall).toISOString(),
    load: {
      durationMs: round(durationMs, 1),
      requests: Math.min(nextUser, cfg.USERS),
      responses,
      statusCounts,
      errors: result.errors,
      timeouts: result.timeouts,
      accepted,
      acceptedRps: round(accepted / (durationMs / 1000)),
      responsesRps: round(responses / (durationMs / 1000)),
      latencyMs,
      nonAcceptedExamples,
      timeline: Array.from(timeline, (slot, second) => slot ?? { second, responses: 0, accepted: 0, over100ms: 0, maxMs: 0 }),
      autocannon: { duration: result.duration, latency: result.latency, requests: result.requests },
    },
    backlog: { peakLive: watcher.peak.live, peakAtMs: watcher.peak.atMs, pollErrors: watcher.errors },
    settle: {
      settled: settledAt !== null,
      settleMs: settleMs === null ? null : round(settleMs, 1),
      lastFinishedAfterLastResponseMs: lastFinishedOn ? round(lastFinishedOn - lastResponseWall, 1) : null,
    },
    jobs,
    coupons,
    sample,
    cpu: { load: loadCpu, settle: settleCpu, msPerRequest: cpuPerRequest(loadCpu, settleCpu, responses) },
    invariants,
    invariantsHeld: invariants.every((c) => c.ok),
  };
}

function cpuPerRequest(load: CpuReport, settle: CpuReport, requests: number) {
  const per = (group: 'web' | 'worker' | 'redis' | 'postgres' | 'bench') =>
    requests > 0 ? round((load.groupsMs[group] + settle.groupsMs[group]) / requests, 3) : null;
  return { web: per('web'), worker: per('worker'), redis: per('redis'), postgres: per('postgres'), bench: per('bench') };
}

// ---------------------------------------------------------------------------------------------
// Reporting

function cpuLine(r: CpuReport): string {
  // The kernel counts CPU time in 10 ms ticks: a phase shorter than half a second says nothing.
  if (r.wallMs < 500) return `n/a (phase lasted ${r.wallMs} ms)`;
  const g = r.groupsPct;
  return `machine ${r.machineBusyPct}% busy of ${r.cores} cores; per process (100% = 1 core): bench ${g.bench}%, web ${g.web}%, workers ${g.worker}%, postgres ${g.postgres}%, redis ${g.redis}%, other ${g.other}%`;
}

function relative(ms: number | null): string {
  return ms === null ? 'n/a before/after' : ms < 0 ? `${fmtMs(-ms)} before` : `${fmtMs(ms)} after`;
}

/** The seconds of the load with the most answers over 100 ms: a cold start shows up in second 0. */
function slowestSeconds(r: RunResult): string {
  const worst = [...r.load.timeline].filter((t) => t.over100ms > 0).sort((a, b) => b.over100ms - a.over100ms).slice(0, 3);
  if (worst.length === 0) return 'no answer took 100 ms or more';
  return worst.map((t) => `second ${t.second}: ${fmtInt(t.over100ms)}/${fmtInt(t.responses)} answers >= 100 ms (max ${fmtMs(t.maxMs)})`).join('; ');
}

function printRun(r: RunResult, runs: number, stock: number): void {
  const l = r.load;
  const statuses = Object.entries(l.statusCounts)
    .sort(([a], [b]) => Number(a) - Number(b))
    .map(([s, n]) => `${s} ×${fmtInt(n)}`)
    .join(', ');
  const refusals = Object.entries(r.jobs.rejected).map(([c, n]) => `${c} ${fmtInt(n)}`).join(', ') || 'none';
  const out = [
    `run ${r.run}/${runs}  policy ${r.policyId}  (${r.startedAt})`,
    `  load       ${fmtInt(l.responses)} responses in ${fmtMs(l.durationMs)}: ${statuses || 'none'}; connection errors ${l.errors}, timeouts ${l.timeouts}`,
    `  accepted   ${fmtInt(l.acceptedRps)} req/s; latency p50 ${l.latencyMs.p50} ms, p95 ${l.latencyMs.p95} ms, p99 ${l.latencyMs.p99} ms, max ${l.latencyMs.max} ms`,
    `  backlog    peak ${fmtInt(r.backlog.peakLive)} live jobs at ${fmtMs(r.backlog.peakAtMs)}`,
    `  settle     ${r.settle.settled ? `${fmtMs(r.settle.settleMs)} after the last response` : 'NOT settled'} (last job finished ${relative(r.settle.lastFinishedAfterLastResponseMs)} it)`,
    `  jobs       ${fmtInt(r.jobs.succeeded)} succeeded, refused: ${refusals}; ${r.jobs.failed} failed, ${r.jobs.retried} batch jobs retried`,
    `  coupons    ${fmtInt(r.coupons.count)}/${fmtInt(stock)} issued over ${fmtMs(r.coupons.issuingMs)} (${r.coupons.issuedPerSec === null ? 'n/a' : fmtInt(r.coupons.issuedPerSec)}/s), sold out ${fmtMs(r.coupons.soldOutAfterLoadStartMs)} after the load started`,
    `  cpu load   ${cpuLine(r.cpu.load)}`,
    `  cpu settle ${cpuLine(r.cpu.settle)}`,
    `  cpu cost   per request: web ${r.cpu.msPerRequest.web} ms, workers ${r.cpu.msPerRequest.worker} ms, redis ${r.cpu.msPerRequest.redis} ms, postgres ${r.cpu.msPerRequest.postgres} ms, bench client ${r.cpu.msPerRequest.bench} ms`,
    `  slowest s  ${slowestSeconds(r)}`,
    `  invariants ${r.invariantsHeld ? `all ${r.invariants.length} held` : 'FAILED:'}`,
    ...r.invariants.filter((c) => !c.ok).map((c) => `    FAIL ${c.name}: ${c.detail}`),
  ];
  process.stdout.write(`${out.join('\n')}\n`);
}

// ---------------------------------------------------------------------------------------------
// Main

async function chooseStack(cfg: Config, stopHooks: (() => Promise<void>)[]): Promise<{ stack: Stack; databaseUrl: string }> {
  const running = cfg.STACK !== 'spawn' && (await isReady(cfg.BASE_URL));
  if (running) {
    const secret = secretForRunningStack(cfg.JWT_SECRET);
    if (!secret) throw new Error(`${cfg.BASE_URL} is ready, but there is no JWT_SECRET to sign tokens with: set it (or run with STACK=spawn)`);
    note(`using the running stack at ${cfg.BASE_URL} (queue prefix ${cfg.QUEUE_PREFIX ?? 'coupon'})`);
    return { stack: reuseStack(cfg.BASE_URL, cfg.QUEUE_PREFIX ?? 'coupon', secret), databaseUrl: cfg.DATABASE_URL ?? DEFAULT_DATABASE_URL };
  }
  if (cfg.STACK === 'reuse') throw new Error(`nothing ready at ${cfg.BASE_URL}/health/ready (STACK=reuse)`);
  if (cfg.STACK === 'auto') note(`nothing ready at ${cfg.BASE_URL}; starting a stack of our own`);
  if (cfg.BUILD) {
    note('npm run build');
    await buildProject();
  }
  const generatedPrefix = cfg.QUEUE_PREFIX === undefined;
  const queuePrefix = cfg.QUEUE_PREFIX ?? `bench-${randomUUID().slice(0, 8)}`;
  const database = benchDatabase(cfg.DATABASE_URL, `flash_${randomUUID().slice(0, 8)}`, note);
  stopHooks.push(database.drop);
  const stack = await spawnStack({
    workers: cfg.WORKERS,
    databaseUrl: database.url,
    redisUrl: cfg.REDIS_URL,
    queuePrefix,
    jwtSecret: cfg.JWT_SECRET,
    log: note,
  });
  stopHooks.push(async () => {
    note('stopping the stack (SIGTERM)');
    await stack.stop();
    if (generatedPrefix) {
      // The bench's own queue is of no use to anyone afterwards.
      const connection = new IORedis(cfg.REDIS_URL, { maxRetriesPerRequest: null });
      const queue = new Queue(ISSUE_QUEUE, { connection, prefix: queuePrefix });
      await queue.obliterate({ force: true }).catch((e: Error) => note(`could not remove queue ${queuePrefix}: ${e.message}`));
      await queue.close();
      connection.disconnect();
    }
  });
  return { stack, databaseUrl: database.url };
}

async function main(): Promise<number> {
  const cfg = loadConfig();
  const connections = Math.min(cfg.CONNECTIONS, cfg.USERS);
  const startedAt = new Date();
  const stopHooks: (() => Promise<void>)[] = [];
  let stopping = false;
  const stopAll = async () => {
    for (const hook of stopHooks.splice(0).reverse()) await hook().catch((e: Error) => note(`cleanup: ${e.message}`));
  };
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (stopping) return;
      stopping = true;
      note(`${signal}: stopping`);
      void stopAll().finally(() => process.exit(130));
    });
  }

  try {
    const { stack, databaseUrl } = await chooseStack(cfg, stopHooks);
    const sign = signer(stack.jwtSecret);
    const connection = new IORedis(cfg.REDIS_URL, { maxRetriesPerRequest: null });
    const queue = new Queue(ISSUE_QUEUE, { connection, prefix: stack.queuePrefix });
    const pg = new PgClient({ connectionString: databaseUrl, application_name: 'coupon-bench' });
    await pg.connect();
    stopHooks.push(async () => {
      await queue.close();
      connection.disconnect();
      await pg.end();
    });
    const ctx: Ctx = { cfg, stack, sign, adminToken: await sign('bench-admin', 'admin'), queue, pg, connections };

    const header = `Flash sale: ${fmtInt(cfg.USERS)} users, ${fmtInt(cfg.STOCK)} coupons, ${connections} connections, ${cfg.RUNS} run(s) against a ${stack.mode} stack at ${stack.baseUrl}${stack.mode === 'spawned' ? ` (1 web, ${cfg.WORKERS} workers)` : ''}; ${cpus().length} CPUs, load average ${loadavg().map((x) => round(x, 2)).join(' ')}`;
    process.stdout.write(`${header}\n`);

    if (cfg.WARMUP > 0) {
      const warm = await runOnce({ ...ctx, cfg: { ...cfg, USERS: cfg.WARMUP, STOCK: Math.max(1, Math.round(cfg.WARMUP / 10)), SAMPLE_JOBS: 0 } }, 0);
      note(`warm-up: ${fmtInt(cfg.WARMUP)} requests at ${fmtInt(warm.load.acceptedRps)} req/s, not counted`);
      await sleep(2_000);
    }
    const runs: RunResult[] = [];
    for (let i = 1; i <= cfg.RUNS; i += 1) {
      if (i > 1) await sleep(2_000); // let the last run's tail (and the machine) quieten down
      const r = await runOnce(ctx, i);
      runs.push(r);
      printRun(r, cfg.RUNS, cfg.STOCK);
    }

    // ---- medians and the bar ----
    const med = {
      acceptedRps: median(runs.map((r) => r.load.acceptedRps)),
      responsesRps: median(runs.map((r) => r.load.responsesRps)),
      loadDurationMs: median(runs.map((r) => r.load.durationMs)),
      p50Ms: median(runs.map((r) => r.load.latencyMs.p50)),
      p95Ms: median(runs.map((r) => r.load.latencyMs.p95)),
      p99Ms: median(runs.map((r) => r.load.latencyMs.p99)),
      settleMs: median(runs.map((r) => (r.settle.settled ? r.settle.settleMs : Infinity))),
      lastFinishedAfterLastResponseMs: median(runs.map((r) => r.settle.lastFinishedAfterLastResponseMs)),
      couponsIssuedPerSec: median(runs.map((r) => r.coupons.issuedPerSec)),
      soldOutAfterLoadStartMs: median(runs.map((r) => r.coupons.soldOutAfterLoadStartMs)),
      peakBacklog: median(runs.map((r) => r.backlog.peakLive)),
      coupons: median(runs.map((r) => r.coupons.count)),
      cpuMsPerRequest: {
        web: median(runs.map((r) => r.cpu.msPerRequest.web)),
        worker: median(runs.map((r) => r.cpu.msPerRequest.worker)),
        redis: median(runs.map((r) => r.cpu.msPerRequest.redis)),
        postgres: median(runs.map((r) => r.cpu.msPerRequest.postgres)),
        bench: median(runs.map((r) => r.cpu.msPerRequest.bench)),
      },
      machineBusyPctDuringLoad: median(runs.map((r) => r.cpu.load.machineBusyPct)),
      otherCpuPctDuringLoad: median(runs.map((r) => r.cpu.load.groupsPct.other)),
    };
    const exactEveryRun = runs.every((r) => r.coupons.count === cfg.STOCK);
    const bars = [
      { name: 'accepted requests per second', target: `>= ${fmtInt(BAR.acceptedRps)}`, value: med.acceptedRps, shown: med.acceptedRps === null ? 'n/a' : fmtInt(med.acceptedRps), ok: (med.acceptedRps ?? 0) >= BAR.acceptedRps },
      { name: 'p99 accept latency', target: `< ${BAR.p99Ms} ms`, value: med.p99Ms, shown: `${med.p99Ms} ms`, ok: med.p99Ms !== null && med.p99Ms < BAR.p99Ms },
      { name: 'settled after the last request', target: `<= ${BAR.settleMs / 1000} s`, value: med.settleMs, shown: fmtMs(med.settleMs), ok: med.settleMs !== null && med.settleMs <= BAR.settleMs },
      { name: 'coupons issued', target: `== ${fmtInt(cfg.STOCK)} in every run`, value: med.coupons, shown: runs.map((r) => fmtInt(r.coupons.count)).join(', '), ok: exactEveryRun },
    ];
    const invariantsHeld = runs.every((r) => r.invariantsHeld);
    const problems = stack.logProblems();

    const summary = [
      '',
      `Summary${runs.length > 1 ? ` (median of ${runs.length} runs)` : ''}: ${fmtInt(med.acceptedRps ?? 0)} accepted req/s, accept latency p50 ${med.p50Ms} ms / p95 ${med.p95Ms} ms / p99 ${med.p99Ms} ms, settled ${fmtMs(med.settleMs)} after the last request, ${med.couponsIssuedPerSec === null ? 'n/a' : fmtInt(med.couponsIssuedPerSec)} coupons issued per second`,
      ...bars.map((b) => `  ${b.ok ? 'PASS' : 'FAIL'}  ${b.name.padEnd(32)} ${b.shown.padEnd(14)} (bar ${b.target})`),
      `  ${invariantsHeld ? 'PASS' : 'FAIL'}  invariants                       ${invariantsHeld ? `held in every run (${runs[0]?.invariants.length ?? 0} checks each)` : `failed in run(s) ${runs.filter((r) => !r.invariantsHeld).map((r) => r.run).join(', ')}`}`,
    ];
    const c = med.cpuMsPerRequest;
    summary.push(
      `  cpu: ${c.web} ms of web CPU per request (one core serves at most ~${c.web ? fmtInt(1000 / c.web) : 'n/a'} req/s), workers ${c.worker} ms, redis ${c.redis} ms, postgres ${c.postgres} ms per job; machine ${med.machineBusyPctDuringLoad}% busy during the load, ${med.otherCpuPctDuringLoad}% of a core used by processes outside the bench and the stack`,
    );
    if (Object.keys(problems.counts).length) {
      summary.push(`  service log: ${Object.entries(problems.counts).map(([l, n]) => `${n} ${l}`).join(', ')} line(s), e.g. ${problems.examples[0] ?? ''}`);
    }

    const finishedAt = new Date();
    const report = {
      bench: 'flash-sale',
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      config: { ...cfg, JWT_SECRET: cfg.JWT_SECRET ? '[set]' : undefined, DATABASE_URL: databaseUrl.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@'), connections },
      stack: { mode: stack.mode, baseUrl: stack.baseUrl, queuePrefix: stack.queuePrefix, workers: stack.mode === 'spawned' ? cfg.WORKERS : null, pids: stack.pids, logDir: stack.logDir ? path.relative(ROOT, stack.logDir) : null, logProblems: problems },
      machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? null, loadavg: loadavg(), node: process.version },
      git: gitState(),
      bar: BAR,
      median: med,
      bars: bars.map(({ shown: _shown, ...b }) => b),
      invariantsHeld,
      runs,
    };
    summary.push(writeResults('flash-sale', 'latest.json', startedAt, report));
    process.stdout.write(`${summary.join('\n')}\n`);
    return invariantsHeld ? 0 : 1;
  } finally {
    await stopAll();
  }
}

runBench(main);
