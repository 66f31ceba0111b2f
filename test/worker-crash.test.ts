// Crash safety of issuance: a worker SIGKILLed in the middle of a sale loses no request and no stock.
import type { ChildProcess } from 'node:child_process';
import { directIssueResultSchema } from '../src/queues/results';
import { Api, mapLimit } from './support/http';
import { eventually } from './support/checkout';
import { activeJobIds, admittedJobsInFlight, jobsById, jobsCarrying, pendingAdmissions, wasTakenOver } from './support/jobs';
import { closeDb, couponsOf } from './support/db';
import { policyBody, uniqueId } from './support/fixtures';
import { startStack, type Stack } from './support/stack';
import { slowPostgres, type TcpProxy } from './support/tcp-proxy';
import { adminToken, tokenFor } from './support/tokens';

let stack: Stack;
let api: Api;
let pgProxy: TcpProxy;
let slowDatabaseUrl: string;

// Short locks so a killed worker's jobs are noticed within seconds instead of half a minute.
const FAST_STALL = { JOB_LOCK_MS: '2000', JOB_STALLED_INTERVAL_MS: '1000', WORKER_CONCURRENCY: '16' };

beforeAll(async () => {
  // The workers reach Postgres through a proxy that adds 20 ms each way, so every winning job is
  // in flight for a while. Each test runs one worker until its kill: every job active then is the
  // victim's, and with no worker left until the replacements start, what it held stays as it was.
  ({ proxy: pgProxy, databaseUrl: slowDatabaseUrl } = await slowPostgres(20));
  stack = await startStack({ workers: 0, name: 'worker-crash', env: FAST_STALL });
  api = new Api(stack.baseUrl, 128);
});

const startSlowWorker = () => stack.startWorker({ ...FAST_STALL, DATABASE_URL: slowDatabaseUrl });

afterAll(async () => {
  await api?.close();
  await stack?.stop();
  await pgProxy?.close();
  await closeDb();
});

/** How many of the sale's jobs were started more than once (taken over after their worker died). */
async function takenOver(jobIds: string[]): Promise<number> {
  const jobs = await jobsCarrying(stack.queuePrefix, jobIds);
  return jobs.filter((j) => j && wasTakenOver(j)).length;
}

function killed(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

describe('a worker killed mid-sale', () => {
  it('keeps I1, I3 and I7: every job settles, exactly the stock is issued, one per user', async () => {
    const admin = await adminToken();
    const created = await api.post('/api/v1/coupons/policies', admin, policyBody({ totalQuantity: 300 }));
    expect(created.status).toBe(201);
    const policyId = created.body.id as string;
    const users = Array.from({ length: 1500 }, (_, i) => uniqueId(`crash${i}`));
    const tokens = await Promise.all(users.map((u) => tokenFor(u)));

    const victim = await startSlowWorker();
    // Once the sale is under way, kill the worker the moment it holds a job with admitted requests
    // whose coupons are not written yet, then bring two fresh ones up, as a process manager would.
    let accepted = 0;
    const crash = (async () => {
      await eventually(
        async () => accepted,
        (n) => n >= 150,
        60_000,
        '150 requests accepted',
      );
      await eventually(
        () => admittedJobsInFlight(stack.queuePrefix, policyId),
        (ids) => ids.length > 0,
        60_000,
        'a job in flight holding admissions',
      );
      await killed(victim);
      // No worker runs now: what is still active holding admissions was cut off by the kill.
      const cutOff = await admittedJobsInFlight(stack.queuePrefix, policyId);
      await Promise.all([startSlowWorker(), startSlowWorker()]);
      return cutOff;
    })();
    crash.catch(() => undefined); // awaited below, once the requests are in
    const replies = await mapLimit(users, 64, async (_user, i) => {
      const reply = await api.post('/api/v1/coupons/issue', tokens[i], { policyId });
      accepted += reply.status === 202 ? 1 : 0;
      return reply;
    });
    const cutOff = await crash;
    expect(victim.signalCode).toBe('SIGKILL');
    expect(cutOff.length).toBeGreaterThan(0); // the kill hit admitted work in flight
    expect(replies.map((r) => r.status)).toEqual(Array(users.length).fill(202));

    const jobs = await mapLimit(replies, 64, (reply, i) => api.settle(reply.body.jobId, tokens[i] as string, 120_000));
    const byStatus = jobs.reduce<Record<string, number>>((acc, j) => ({ ...acc, [j.status]: (acc[j.status] ?? 0) + 1 }), {});
    expect(byStatus.pending ?? 0).toBe(0); // I7: nothing is left hanging
    expect(byStatus.failed ?? 0).toBe(0); // a stalled job is retried, not failed
    expect(byStatus.succeeded).toBe(300);

    const rows = await couponsOf(policyId);
    expect(rows).toHaveLength(300); // I1 and I3
    expect(new Set(rows.map((r) => r.user_id)).size).toBe(300);
    expect(rows.map((r) => r.slot)).toEqual(Array.from({ length: 300 }, (_, i) => i + 1));
    const winners = new Set(jobs.filter((j) => j.status === 'succeeded').map((j) => j.result.id));
    expect(winners).toEqual(new Set(rows.map((r) => r.id)));
    // Every job the kill cut off holding admissions was taken over and finished by another worker.
    const cutOffJobs = await jobsById(stack.queuePrefix, 'issue', cutOff);
    expect(cutOffJobs.map((j) => j && { finished: j.finishedOn !== undefined, takenOver: wasTakenOver(j) })).toEqual(
      cutOff.map(() => ({ finished: true, takenOver: true })),
    );
  });
});

describe('workers killed mid-grant', () => {
  it('finishes a direct grant of 1,000 users on a policy of 600 exactly: 600 issued, 400 SOLD_OUT', async () => {
    const admin = await adminToken();
    const created = await api.post('/api/v1/coupons/policies', admin, policyBody({ issueMethod: 'DIRECT', totalQuantity: 600 }));
    expect(created.status).toBe(201);
    const policyId = created.body.id as string;
    const userIds = Array.from({ length: 1000 }, (_, i) => uniqueId(`grant${i}`));
    await startSlowWorker();
    const reply = await api.post(`/api/v1/coupons/policies/${policyId}/direct-issue`, admin, { userIds });
    expect(reply.status).toBe(202);
    const jobId = reply.body.jobId as string;

    // Once the grant is under way and holds admissions whose coupons are not written yet, kill every
    // worker and start a fresh one, as a process manager would.
    const grantInFlight = async () => {
      const [view, held] = await Promise.all([api.get(`/api/v1/jobs/${jobId}`, admin), pendingAdmissions(stack.queuePrefix, policyId)]);
      return { status: view.body.status as string, done: (view.body.progress?.done ?? 0) as number, held };
    };
    const underWay = await eventually(
      grantInFlight,
      (g) => g.status !== 'pending' || (g.done >= 100 && g.held > 0),
      60_000,
      'the grant under way',
    );
    expect(underWay.status).toBe('pending');
    const victims = stack.workers.filter((w) => w.exitCode === null && w.signalCode === null);
    await Promise.all(victims.map((w) => killed(w)));
    // No worker runs now: the grant is still active with slots held, cut off by the kill.
    const atKill = await grantInFlight();
    expect(atKill.status).toBe('pending');
    expect(atKill.done).toBeLessThan(1000);
    expect(atKill.held).toBeGreaterThan(0);
    expect(await activeJobIds(stack.queuePrefix, 'issue')).toContain(jobId);
    await startSlowWorker();

    const job = await api.settle(jobId, admin, 120_000);
    expect(job.status).toBe('succeeded');
    const grant = directIssueResultSchema.parse(job.result);
    expect(grant).toMatchObject({ requested: 1000, issued: 600, rejected: 400, failed: 0, rejectedBy: { SOLD_OUT: 400 } });
    const rows = await couponsOf(policyId);
    expect(rows).toHaveLength(600);
    expect(new Set(rows.map((r) => r.user_id)).size).toBe(600);
    expect(rows.map((r) => r.slot)).toEqual(Array.from({ length: 600 }, (_, i) => i + 1));
    const issued = grant.results.filter((r) => r.outcome === 'issued');
    expect(new Set(issued.map((r) => r.couponId))).toEqual(new Set(rows.map((r) => r.id)));
    expect(await takenOver([jobId])).toBe(1);
  });
});
