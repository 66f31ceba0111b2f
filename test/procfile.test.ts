// The service as a Procfile runner starts it: the Procfile's own commands, compiled JS from dist/,
// two web processes (each on its own PORT) and three workers sharing the queues, plus the bridge.
// A sale split across both webs must come out exact, and every process must drain and exit 0.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { Queue } from 'bullmq';
import IORedis from 'ioredis';
import { QUEUES } from '../src/queues/names';
import { freePort } from '../scripts/infra/process';
import { buildIfStale, procfile } from './support/build';
import { closeDb, couponsOf } from './support/db';
import { eventually } from './support/checkout';
import { policyBody, uniqueId } from './support/fixtures';
import { Api, mapLimit } from './support/http';
import { logFile, logLines, waitForLine } from './support/stack';
import { adminToken, tokenFor } from './support/tokens';

const ROOT = resolve(__dirname, '..');
const BOARD = { user: 'ops', password: 'procfile-board-password' };

interface Proc {
  name: string;
  /** The `sh -c` running the Procfile command, in a process group of its own. */
  sh: ChildProcess;
  exited: Promise<number | null>;
}

/** Starts a Procfile command the way Procfile runners do: `sh -c <command>` with the process's env. */
function start(name: string, command: string, env: Record<string, string>): Proc {
  mkdirSync(dirname(logFile(name)), { recursive: true });
  const log = createWriteStream(logFile(name));
  const sh = spawn('sh', ['-c', command], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  sh.stdout?.pipe(log);
  sh.stderr?.pipe(log);
  const exited = new Promise<number | null>((resolveExit) => sh.once('exit', (code) => resolveExit(code)));
  return { name, sh, exited };
}

/**
 * SIGTERM to what the runner started. The Procfile's commands `exec` node, so the shell a runner
 * starts them with becomes node itself and the signal reaches the service (Debian's sh would not
 * exec on its own, die of the signal and orphan node without its drain).
 */
function terminate(proc: Proc): void {
  const pid = proc.sh.pid as number;
  expect(readFileSync(`/proc/${pid}/comm`, 'utf8').trim()).toBe('node');
  process.kill(pid, 'SIGTERM');
}

const basic = `Basic ${Buffer.from(`${BOARD.user}:${BOARD.password}`).toString('base64')}`;

describe('a multi-process run from the Procfile commands', () => {
  const procs: Proc[] = [];
  const apis: Api[] = [];
  const prefix = uniqueId('q');
  let webs: Proc[] = [];
  let workers: Proc[] = [];
  let bridge: Proc;

  beforeAll(async () => {
    const commands = procfile();
    const [web, worker, bridgeCmd] = ['web', 'worker', 'bridge'].map((name) => {
      const command = commands.get(name);
      if (!command) throw new Error(`the Procfile has no ${name} process`);
      return command;
    }) as [string, string, string];
    buildIfStale([web, worker, bridgeCmd]);

    const env: Record<string, string> = {
      QUEUE_PREFIX: prefix,
      DATABASE_URL: process.env.DATABASE_URL as string,
      REDIS_URL: process.env.REDIS_URL as string,
      KAFKA_BROKERS: process.env.KAFKA_BROKERS as string,
      JWT_SECRET: process.env.JWT_SECRET as string,
      CODE_HMAC_SECRET: process.env.CODE_HMAC_SECRET as string,
      KAFKA_PAYMENTS_TOPIC: `payments.v1.${prefix}`,
      KAFKA_USER_EVENTS_TOPIC: `user-events.v1.${prefix}`,
      KAFKA_GROUP_ID: `bridge-${prefix}`,
      KAFKA_SESSION_TIMEOUT_MS: '6000',
      NODE_ENV: 'test',
      LOG_LEVEL: 'info',
      // All load comes from 127.0.0.1, and six processes share the test Postgres with other tests.
      RATE_LIMIT_IP_POINTS: '0',
      RATE_LIMIT_USER_POINTS: '10000',
      DATABASE_POOL_MAX: '4',
      // Several workers on one host: each ops server on a free port of its own.
      WORKER_OPS_PORT: '0',
      BRIDGE_OPS_PORT: '0',
      BULL_BOARD_USER: '',
      BULL_BOARD_PASSWORD: '',
    };
    // Like a Procfile runner, a PORT for every process; only the webs listen on it.
    const ports = await Promise.all(Array.from({ length: 6 }, () => freePort()));
    webs = [
      start('procfile-web-1', web, { ...env, PORT: String(ports[0]), BULL_BOARD_USER: BOARD.user, BULL_BOARD_PASSWORD: BOARD.password }),
      start('procfile-web-2', web, { ...env, PORT: String(ports[1]) }),
    ];
    workers = [1, 2, 3].map((i) => start(`procfile-worker-${i}`, worker, { ...env, PORT: String(ports[1 + i]) }));
    bridge = start('procfile-bridge-1', bridgeCmd, { ...env, PORT: String(ports[5]) });
    procs.push(...webs, ...workers, bridge);
    await Promise.all([
      ...webs.map((p) => waitForLine(p.sh, 'web listening')),
      ...workers.map((p) => waitForLine(p.sh, 'worker started')),
      waitForLine(bridge.sh, 'bridge joined the consumer group', 90_000),
    ]);
    apis.push(...webs.map((_, i) => new Api(`http://127.0.0.1:${ports[i]}`, 64)));
  }, 300_000);

  afterAll(async () => {
    await Promise.all(apis.map((api) => api.close()));
    for (const proc of procs) {
      if (proc.sh.exitCode === null && proc.sh.signalCode === null) {
        try {
          process.kill(-(proc.sh.pid as number), 'SIGKILL');
        } catch {
          /* gone already */
        }
      }
    }
    await closeDb();
  });

  it('sells exactly the stock through two webs and three workers, and every process exits 0 on SIGTERM', async () => {
    const [a, b] = apis as [Api, Api];
    const admin = await adminToken();
    const created = await a.post('/api/v1/coupons/policies', admin, policyBody({ totalQuantity: 200 }));
    expect(created.status).toBe(201);
    const policyId = created.body.id as string;

    // 600 users ask twice each, once through each web, all at once.
    const users = Array.from({ length: 600 }, (_, i) => uniqueId(`pf${i}`));
    const tokens = new Map(await Promise.all(users.map(async (u) => [u, await tokenFor(u)] as const)));
    const requests = users.flatMap((user) => [0, 1].map((web) => ({ user, web })));
    const accepted = await Promise.all(
      requests.map(async ({ user, web }) => ({
        user,
        web,
        reply: await (web === 0 ? a : b).post('/api/v1/coupons/issue', tokens.get(user), { policyId }),
      })),
    );
    expect(accepted.filter((r) => r.reply.status !== 202)).toEqual([]);
    // Each job read through the other web: the job view needs nothing of the process that took it.
    const jobs = await mapLimit(accepted, 64, ({ user, web, reply }) =>
      (web === 0 ? b : a).settle(reply.body.jobId, tokens.get(user) as string, 60_000),
    );

    const statuses = jobs.map((j) => j.status as string);
    expect(statuses.filter((s) => s === 'pending' || s === 'failed')).toEqual([]);
    const winners = accepted.filter((_, i) => statuses[i] === 'succeeded').map((r) => r.user);
    expect(winners).toHaveLength(200);
    expect(new Set(winners).size).toBe(200);
    const refusals = new Set(jobs.filter((j) => j.status === 'rejected').map((j) => j.reason.code as string));
    expect([...refusals].filter((code) => code !== 'SOLD_OUT' && code !== 'USER_LIMIT_REACHED')).toEqual([]);
    const rows = await couponsOf(policyId);
    expect(rows).toHaveLength(200);
    expect(new Set(rows.map((r) => r.user_id))).toEqual(new Set(winners));
    expect(rows.map((r) => r.slot)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));

    // Nothing left behind in the queue.
    const connection = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
    const queue = new Queue(QUEUES.issue, { connection, prefix });
    try {
      expect(await queue.getJobCounts('waiting', 'active', 'delayed', 'failed', 'prioritized', 'waiting-children')).toEqual({
        waiting: 0,
        active: 0,
        delayed: 0,
        failed: 0,
        prioritized: 0,
        'waiting-children': 0,
      });
    } finally {
      await queue.close();
      connection.disconnect();
    }

    // The coupons were written by more than one worker process.
    // (A log line may land a moment after the answer it explains.)
    const countIssued = async () => workers.map((w) => logLines(w.name).filter((l) => l.msg === 'coupon issued').length);
    const issuedBy = await eventually(
      countIssued,
      (counts) => counts.reduce((x, y) => x + y, 0) >= 200,
      10_000,
      'the workers to log 200 issues',
    );
    expect(issuedBy.reduce((x, y) => x + y, 0)).toBe(200);
    expect(issuedBy.filter((n) => n > 0).length).toBeGreaterThan(1);

    // Bull Board from dist/: the static assets resolve; off (404) where no credentials are set.
    const page = await a.call('GET', '/admin/queues', { headers: { authorization: basic } });
    expect(page.status).toBe(200);
    const css = /href="(static\/css\/[^"]+\.css)"/.exec(String(page.body))?.[1];
    expect((await a.call('GET', `/admin/queues/${css}`, { headers: { authorization: basic } })).status).toBe(200);
    expect((await a.get(`/admin/queues/${css}`)).status).toBe(401);
    expect((await b.call('GET', '/admin/queues', { headers: { authorization: basic } })).status).toBe(404);
    expect(logLines('procfile-web-2').map((l) => l.msg)).toContain('Bull Board off: set BULL_BOARD_USER and BULL_BOARD_PASSWORD');

    await Promise.all(apis.map((api) => api.close()));
    apis.length = 0;
    for (const proc of procs) terminate(proc);
    const codes = await Promise.all(procs.map((p) => p.exited));
    expect(Object.fromEntries(procs.map((p, i) => [p.name, codes[i]]))).toEqual(Object.fromEntries(procs.map((p) => [p.name, 0])));
  }, 180_000);
});
