// Graceful shutdown: a worker sent SIGTERM mid-sale finishes what it holds and exits 0 by itself, losing
// nothing; the web process exits 0 on SIGTERM too.
import type { ChildProcess } from 'node:child_process';
import { Api, mapLimit } from './support/http';
import { eventually } from './support/checkout';
import { admittedJobsInFlight, jobsCarrying, wasTakenOver } from './support/jobs';
import { closeDb, couponsOf } from './support/db';
import { policyBody, uniqueId } from './support/fixtures';
import { logLines, startStack, type Stack } from './support/stack';
import { slowPostgres, type TcpProxy } from './support/tcp-proxy';
import { adminToken, tokenFor } from './support/tokens';

const NAME = 'graceful-shutdown';
let stack: Stack;
let api: Api;
let pgProxy: TcpProxy;
let slowDatabaseUrl: string;
const workerEnv = () => ({ DATABASE_URL: slowDatabaseUrl });

beforeAll(async () => {
  // Workers reach Postgres through a proxy adding 20 ms each way, so a job stays in flight long
  // enough for the test to see it. One worker until its SIGTERM: every active job is then its own.
  ({ proxy: pgProxy, databaseUrl: slowDatabaseUrl } = await slowPostgres(20));
  stack = await startStack({ workers: 0, name: NAME, env: { WORKER_CONCURRENCY: '16' } });
  await stack.startWorker(workerEnv());
  api = new Api(stack.baseUrl, 64);
});

afterAll(async () => {
  await api?.close();
  await stack?.stop();
  await pgProxy?.close();
  await closeDb();
});

/** Sends SIGTERM and waits for the process to exit by itself (no SIGKILL here). */
function terminated(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.kill('SIGTERM');
  });
}

/**
 * The messages of a process's pino log in the order they were logged (by their time: lines from the
 * pipe may reach the file a little out of order), once the last is `last` (the file is written a
 * little after exit).
 */
async function messagesOf(name: string, last: string): Promise<(string | undefined)[]> {
  const until = Date.now() + 5_000;
  for (;;) {
    const messages = logLines(name)
      .map((line, i) => ({ line, i, at: Date.parse(String(line.time)) }))
      .sort((a, b) => a.at - b.at || a.i - b.i)
      .map(({ line }) => line.msg);
    if (messages.at(-1) === last || Date.now() > until) return messages;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** How many of the jobs were started more than once, i.e. taken over from a worker that let them go. */
async function takenOver(jobIds: string[]): Promise<number> {
  const jobs = await jobsCarrying(stack.queuePrefix, jobIds);
  return jobs.filter((j) => !j || wasTakenOver(j)).length;
}

describe('graceful shutdown', () => {
  it('lets a worker sent SIGTERM mid-sale finish its jobs and exit 0, with exactly the stock issued', async () => {
    const admin = await adminToken();
    const created = await api.post('/api/v1/coupons/policies', admin, policyBody({ totalQuantity: 200 }));
    expect(created.status).toBe(201);
    const policyId = created.body.id as string;
    const users = Array.from({ length: 600 }, (_, i) => uniqueId(`term${i}`));
    const tokens = await Promise.all(users.map((u) => tokenFor(u)));

    const victim = stack.workers[0] as ChildProcess;
    // Aimed: the signal goes the moment the victim, the only worker, holds a job with admitted
    // requests whose coupons are not written yet. A fresh worker then takes the rest of the sale, as
    // in a rolling restart. (Aimed at its first coupon in the log instead, on a loaded machine the
    // signal once came after the victim's last job and it had nothing left to finish.)
    const signalled = (async () => {
      await eventually(
        () => admittedJobsInFlight(stack.queuePrefix, policyId),
        (ids) => ids.length > 0,
        60_000,
        'a job in flight holding admissions',
      );
      const exit = terminated(victim);
      await stack.startWorker(workerEnv());
      return { exit };
    })();
    signalled.catch(() => undefined); // awaited below, once the requests are in
    const replies = await mapLimit(users, 32, (_user, i) => api.post('/api/v1/coupons/issue', tokens[i], { policyId }));
    expect(replies.map((r) => r.status)).toEqual(Array(users.length).fill(202));
    expect(await (await signalled).exit).toEqual({ code: 0, signal: null });

    const jobs = await mapLimit(replies, 64, (reply, i) => api.settle(reply.body.jobId, tokens[i] as string, 60_000));
    const byStatus = jobs.reduce<Record<string, number>>((acc, j) => ({ ...acc, [j.status]: (acc[j.status] ?? 0) + 1 }), {});
    expect(byStatus).toEqual({ succeeded: 200, rejected: 400 });
    expect(jobs.filter((j) => j.status === 'rejected').map((j) => j.reason.code)).toEqual(Array(400).fill('SOLD_OUT'));

    const rows = await couponsOf(policyId);
    expect(rows).toHaveLength(200);
    expect(new Set(rows.map((r) => r.user_id)).size).toBe(200);
    expect(rows.map((r) => r.slot)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect(new Set(jobs.filter((j) => j.status === 'succeeded').map((j) => j.result.id))).toEqual(new Set(rows.map((r) => r.id)));

    // It drained rather than died: it finished jobs after the signal, and none had to be taken over.
    const lines = await messagesOf(`${NAME}-worker-1`, 'worker stopped');
    expect(lines.at(-1)).toBe('worker stopped');
    const draining = lines.indexOf('worker draining: finishing in-flight jobs');
    expect(draining).toBeGreaterThanOrEqual(0);
    expect(lines.slice(draining).filter((m) => m === 'coupon issued').length).toBeGreaterThan(0);
    expect(await takenOver(replies.map((r) => r.body.jobId))).toBe(0);
  });

  it('lets the web process exit 0 on SIGTERM', async () => {
    const ready = await api.get('/health/ready');
    expect(ready.status).toBe(200);
    expect(await terminated(stack.web)).toEqual({ code: 0, signal: null });
    const lines = await messagesOf(`${NAME}-web`, 'web stopped');
    expect(lines.at(-1)).toBe('web stopped');
    expect(lines).toContain('web draining');
  });
});
