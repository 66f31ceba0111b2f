// `npm start` as a process manager: the runner (scripts/start.ts, the Procfile's commands from dist/)
// with a formation of two workers; one worker SIGKILLed while it writes a batch of coupons is
// restarted by the runner, the sale still ends exact with every shopper answered, and Ctrl-C then
// stops web, bridge and workers in that order and leaves nothing running.
import { Queue } from 'bullmq';
import IORedis from 'ioredis';
import { QUEUES, parseRequestId } from '../src/queues/names';
import { freePort, isAlive, isPortFree } from '../scripts/infra/process';
import { buildIfStale, procfile } from './support/build';
import { closeDb, couponsOf } from './support/db';
import { policyBody, uniqueId } from './support/fixtures';
import { Api, mapLimit } from './support/http';
import { wasTakenOver } from './support/jobs';
import { startRunner, type Runner } from './support/runner';
import { slowPostgres, type TcpProxy } from './support/tcp-proxy';
import { adminToken, tokenFor } from './support/tokens';

const STOCK = 100;
const SHOPPERS = 300;

let runner: Runner;
let pgProxy: TcpProxy;
let api: Api;
let webPort: number;
const prefix = uniqueId('q');

beforeAll(async () => {
  buildIfStale([...procfile().values()]);
  // Every process reaches Postgres through a proxy that adds 25 ms each way: a batch of coupons
  // takes long enough to write that the kill below lands in the middle of one.
  let databaseUrl: string;
  ({ proxy: pgProxy, databaseUrl } = await slowPostgres(25));
  webPort = await freePort();
  runner = startRunner('supervisor-run', ['worker=2'], {
    DATABASE_URL: databaseUrl,
    PORT: String(webPort),
    QUEUE_PREFIX: prefix,
    KAFKA_PAYMENTS_TOPIC: `payments.v1.${prefix}`,
    KAFKA_USER_EVENTS_TOPIC: `user-events.v1.${prefix}`,
    KAFKA_GROUP_ID: `bridge-${prefix}`,
    KAFKA_SESSION_TIMEOUT_MS: '6000',
    LOG_LEVEL: 'info',
    NODE_ENV: 'test',
    // The 20th coupon a worker commits stops that worker right after the commit, once: its batch
    // stays active with coupons of it logged, so the kill below always lands in the middle of one.
    FAILPOINTS: 'issue.after-commit=hang@20',
    RATE_LIMIT_IP_POINTS: '0',
    RATE_LIMIT_USER_POINTS: '10000',
    DATABASE_POOL_MAX: '8',
    // Other runs share this host: ops servers on free ports (each logs its own).
    WORKER_OPS_PORT: '0',
    BRIDGE_OPS_PORT: '0',
    // A killed worker's jobs are taken over within seconds instead of half a minute.
    JOB_LOCK_MS: '2000',
    JOB_STALLED_INTERVAL_MS: '1000',
    BULL_BOARD_USER: '',
    BULL_BOARD_PASSWORD: '',
  });
  await runner.waitFor(/^start: web\.1, worker\.1, worker\.2, bridge\.1 running/, 90_000);
  await eventuallyTrue(
    () =>
      ['worker.1', 'worker.2'].every((w) => runner.logOf(w).some((l) => l.msg === 'worker started')) &&
      runner.logOf('web.1').some((l) => l.msg === 'web listening'),
    60_000,
    'web and workers to start',
  );
  api = new Api(`http://127.0.0.1:${webPort}`, 64);
}, 150_000);

async function closeApi(): Promise<void> {
  const open = api;
  api = undefined as unknown as Api;
  await open?.close();
}

afterAll(async () => {
  await closeApi();
  await runner?.kill();
  await pgProxy?.close();
  await closeDb();
});

async function eventuallyTrue(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}:\n${runner.lines().slice(-20).join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Catches the worker the failpoint stopped in the middle of an issue batch (its log line names the
 * request, so the batch job; the other worker keeps working and must not be the one killed, or the
 * stopped one would hold its batch, lock renewed, for ever). The worker is frozen (SIGSTOP) and the
 * job read again: still active, in its first run, while its holder is frozen means the kill lands on
 * work in flight.
 * Returns the frozen worker, its pid and the job.
 */
async function freezeWorkerMidBatch(queue: Queue, timeoutMs: number): Promise<{ worker: string; pid: number; jobId: string }> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    for (const worker of ['worker.1', 'worker.2']) {
      const line = runner.logOf(worker).find((l) => l.msg === 'failpoint issue.after-commit' && typeof l.jobId === 'string');
      if (!line) continue;
      const jobId = parseRequestId(line.jobId as string).jobId;
      const pid = runner.pidsOf(worker)[0] as number;
      process.kill(pid, 'SIGSTOP');
      const job = await queue.getJob(jobId);
      // In its first run, so the worker that stopped in it is the one holding it.
      const firstRun = job?.attemptsStarted === 1 && !wasTakenOver(job);
      if (firstRun && (await job.getState()) === 'active') return { worker, pid, jobId };
      process.kill(pid, 'SIGCONT');
    }
    if (Date.now() > until) throw new Error('no worker was caught in the middle of a batch');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('npm start with worker=2, one worker SIGKILLed mid-sale', () => {
  it('restarts the worker, sells exactly the stock, answers every shopper, and stops in order on Ctrl-C', async () => {
    const admin = await adminToken();
    const created = await api.post('/api/v1/coupons/policies', admin, policyBody({ totalQuantity: STOCK }));
    expect(created.status).toBe(201);
    const policyId = created.body.id as string;
    const users = Array.from({ length: SHOPPERS }, (_, i) => uniqueId(`sv${i}`));
    const tokens = await Promise.all(users.map((u) => tokenFor(u)));

    const connection = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
    const queue = new Queue(QUEUES.issue, { connection, prefix });
    let victim = '';
    try {
      const sale = mapLimit(users, 32, (_user, i) => api.post('/api/v1/coupons/issue', tokens[i], { policyId }));
      const caught = await freezeWorkerMidBatch(queue, 30_000);
      victim = caught.worker;
      const { pid: oldPid, jobId: cutJob } = caught;
      process.kill(oldPid, 'SIGKILL');

      // The runner notices, says so, and starts the worker again under a new pid.
      await runner.waitFor(
        new RegExp(
          `^warning: start: ${victim.replace('.', '\\.')} exited unexpectedly \\(signal SIGKILL, pid ${oldPid}.*restart 1 \\(attempt 1 in a row\\) in 0\\.5 s`,
        ),
        20_000,
      );
      const restarted = await runner.waitFor(
        new RegExp(`^start: ${victim.replace('.', '\\.')} started again \\(restart 1\\), pid (\\d+)`),
        20_000,
      );
      const newPid = Number(restarted[1]);
      expect(newPid).not.toBe(oldPid);
      await eventuallyTrue(
        () => runner.logOf(victim).some((l) => l.msg === 'worker started' && l.pid === newPid),
        60_000,
        'the restarted worker to start',
      );

      const replies = await sale;
      expect(replies.map((r) => r.status)).toEqual(Array(SHOPPERS).fill(202));
      const jobs = await mapLimit(replies, 64, (reply, i) => api.settle(reply.body.jobId, tokens[i] as string, 90_000));
      // Every shopper got a final answer: a coupon or a refusal, nothing pending or failed.
      const statuses = jobs.map((j) => j.status as string);
      expect(statuses.filter((s) => s !== 'succeeded' && s !== 'rejected')).toEqual([]);
      const refusals = new Set(jobs.filter((j) => j.status === 'rejected').map((j) => j.reason.code as string));
      expect([...refusals].filter((code) => code !== 'SOLD_OUT')).toEqual([]);
      const winners = users.filter((_, i) => statuses[i] === 'succeeded');
      expect(winners).toHaveLength(STOCK);

      const rows = await couponsOf(policyId);
      expect(rows).toHaveLength(STOCK);
      expect(new Set(rows.map((r) => r.user_id))).toEqual(new Set(winners));
      expect(rows.map((r) => r.slot)).toEqual(Array.from({ length: STOCK }, (_, i) => i + 1));
      // The batch cut off by the kill was taken over and finished by a worker.
      const cut = await queue.getJob(cutJob);
      expect(cut && wasTakenOver(cut)).toBe(true);
      expect(await cut?.getState()).toBe('completed');
    } finally {
      await queue.close();
      connection.disconnect();
    }

    await stopsInOrder(victim);
  }, 180_000);
});

/** Ctrl-C: web first, then the bridge, then the workers; every process exits 0; nothing is left. */
async function stopsInOrder(restartedWorker: string): Promise<void> {
  await runner.waitFor(/^bridge\.1\s*\| .*"bridge joined the consumer group"/, 60_000);
  // No connection of ours keeps the web draining.
  await closeApi();
  const opsPorts = ['worker.1', 'worker.2', 'bridge.1'].flatMap((p) =>
    runner
      .logOf(p)
      .filter((l) => l.msg === 'ops server listening')
      .map((l) => l.port as number),
  );
  const pids = ['web.1', 'worker.1', 'worker.2', 'bridge.1'].flatMap((p) => runner.pidsOf(p));
  const since = runner.lines().length;
  runner.child.kill('SIGINT');
  expect(await runner.exited).toBe(0);

  const own = runner
    .lines()
    .slice(since)
    .filter((line) => /^(warning: )?start: /.test(line));
  expect(own.filter((line) => /^start: (stopping |\S+ stopped \(|stopped)/.test(line))).toEqual([
    'start: stopping web.1...',
    'start: web.1 stopped (exit code 0)',
    'start: stopping bridge.1...',
    'start: bridge.1 stopped (exit code 0)',
    'start: stopping worker.1, worker.2...',
    'start: worker.1 stopped (exit code 0)',
    'start: worker.2 stopped (exit code 0)',
    'start: stopped (exit code 0)',
  ]);
  // The stop restarted nothing, and the summary counts the one restart.
  expect(own.filter((line) => line.includes('exited unexpectedly'))).toEqual([]);
  const counts = { 'web.1': 0, 'worker.1': 0, 'worker.2': 0, 'bridge.1': 0, [restartedWorker]: 1 };
  expect(own).toContain(
    `start: restarts per process: ${Object.entries(counts)
      .map(([name, n]) => `${name} ${n}`)
      .join(', ')}`,
  );

  expect(pids.filter((pid) => isAlive(pid))).toEqual([]);
  expect(opsPorts.length).toBeGreaterThanOrEqual(4);
  for (const port of [webPort, ...opsPorts]) expect([port, await isPortFree('0.0.0.0', port)]).toEqual([port, true]);
}
