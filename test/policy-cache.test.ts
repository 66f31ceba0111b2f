// The policy lookups of the issue path across real processes: two webs, two workers (and a third
// started late), this test process following the same Redis channel, Postgres and Redis. An admin's
// change made through one web must reach every process within a second: a paused policy stops
// issuing everywhere, a new shared code or EVENT trigger is seen everywhere.
import type { Redis } from 'ioredis';
import { config } from '../src/core/config';
import { logger } from '../src/core/logger';
import { closeSequelize, sequelize } from '../src/core/postgres';
import { createRedis, waitForReady } from '../src/core/redis';
import { redisKeys } from '../src/core/redis-keys';
import { initModels } from '../src/storage';
import { policyCache, startPolicyCache } from '../src/storage/cache/policy-cache';
import { createQueues, type Queues } from '../src/queues/connection';
import { addJob } from '../src/queues/enqueue';
import { derivedJobId } from '../src/queues/names';
import { userEventReturnSchema } from '../src/queues/results';
import { eventually } from './support/checkout';
import { closeDb, db } from './support/db';
import { createPolicy, uniqueId } from './support/fixtures';
import { Api, mapLimit } from './support/http';
import { logLines, startStack, type Stack } from './support/stack';
import { adminToken, tokenFor } from './support/tokens';

let stack: Stack;
/** One client per web process: [the stack's first web, the second]. */
let webs: [Api, Api];
let admin: string;
let redis: Redis;
let queues: Queues;
let stopFollowing: () => Promise<void>;

// One prefix for the stack and this process: the same channel, the same admission keys.
const sharedPrefix = process.env.QUEUE_PREFIX;
const prefix = uniqueId('pc');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

beforeAll(async () => {
  process.env.QUEUE_PREFIX = prefix;
  expect(config().QUEUE_PREFIX).toBe(prefix);
  stack = await startStack({ workers: 2, name: 'policy-cache', env: { QUEUE_PREFIX: prefix } });
  const second = await stack.startWeb();
  webs = [new Api(stack.baseUrl, 64), new Api(second.baseUrl, 64)];
  admin = await adminToken();
  initModels(sequelize());
  redis = createRedis('client');
  await waitForReady(redis);
  queues = createQueues();
  // This process follows admin changes like a web or a worker does, so its cache can be watched.
  stopFollowing = await startPolicyCache(logger());
});

afterAll(async () => {
  await stopFollowing?.();
  await Promise.all((webs ?? []).map((api) => api.close()));
  await queues?.close();
  await stack?.stop();
  redis?.disconnect();
  await closeSequelize();
  await closeDb();
  process.env.QUEUE_PREFIX = sharedPrefix;
});

interface Sent {
  web: 0 | 1;
  user: string;
  token: string;
  sentAt: number;
  status: number;
  jobId: string;
}

/** Senders that each post an issue request for a new user every few ms, alternating the webs, until stopped. */
function startSale(policyId: string, senders = 16, gapMs = 25) {
  const sent: Sent[] = [];
  let stopped = false;
  const sender = async (k: number) => {
    for (let i = 0; !stopped; i += 1) {
      const web = ((k + i) % 2) as 0 | 1;
      const user = uniqueId(`ps${k}`);
      const token = await tokenFor(user);
      const sentAt = Date.now();
      const reply = await webs[web].post('/api/v1/coupons/issue', token, { policyId });
      sent.push({ web, user, token, sentAt, status: reply.status, jobId: reply.body?.jobId });
      await sleep(gapMs);
    }
  };
  const running = Promise.all(Array.from({ length: senders }, (_, k) => sender(k)));
  return {
    sent,
    async stop() {
      stopped = true;
      await running;
      expect(sent.filter((s) => s.status !== 202)).toEqual([]);
      // Each job read through the other web.
      return mapLimit(sent, 64, async (s) => ({ ...s, job: await webs[s.web === 0 ? 1 : 0].settle(s.jobId, s.token, 30_000) }));
    },
  };
}

async function couponTimes(policyId: string) {
  const { rows } = await db().query<{ user_id: string; slot: number; issued_at: Date; created_at: Date }>(
    'SELECT user_id, slot, issued_at, created_at FROM coupons WHERE policy_id = $1 ORDER BY slot',
    [policyId],
  );
  return rows;
}

const countOf = async (policyId: string) =>
  Number((await db().query('SELECT count(*) AS n FROM coupons WHERE policy_id = $1', [policyId])).rows[0].n);

/** A user event straight onto the issue queue, as the bridge queues one; the job's result. */
async function userEvent(type: string, userId = uniqueId('eu')) {
  const event = { eventId: uniqueId('ev'), type, userId, occurredAt: new Date().toISOString() };
  const data = {
    event,
    traceId: uniqueId('trace'),
    source: { topic: 'test', partition: 0, offset: '0' },
    receivedAt: new Date().toISOString(),
  };
  const jobId = derivedJobId('user-event', event.eventId);
  await addJob(queues, 'user-event', data, jobId);
  const job = await eventually(
    () => queues.get('issue').getJob(jobId),
    (j) => Boolean(j?.finishedOn),
    15_000,
    `user event job ${jobId}`,
  );
  const value = userEventReturnSchema.parse(job?.returnvalue);
  if (value.outcome !== 'succeeded') throw new Error(`user event job ${jobId} ${value.outcome}: ${value.reason.code}`);
  return { eventId: event.eventId, policies: value.result.policies };
}

/** The log lines of a process of this stack. */
const stackLogLines = (name: string) => logLines(`policy-cache-${name}`);

/** How long after `since` `read` answered `want` (polled as `eventually` polls, every 100 ms); fails after 5 s. */
async function msUntil<T>(read: () => Promise<T>, want: T, since: number): Promise<number> {
  await eventually(read, (value) => value === want, 5_000, `the cache to answer ${String(want)}`);
  return Date.now() - since;
}

describe('policy changes during a sale', () => {
  it('stops issuing through two webs and two workers within a second of a pause, and sells exactly the rest after a resume', async () => {
    const total = 600;
    const policyId = await createPolicy(webs[0], { totalQuantity: total, perUserLimit: 1 });

    const first = startSale(policyId);
    await eventually(
      () => countOf(policyId),
      (n) => n >= 100,
      15_000,
      'the sale under way',
    );
    const pause = await webs[0].patch(`/api/v1/coupons/policies/${policyId}`, admin, { status: 'PAUSED' });
    expect(pause.status).toBe(200);
    const pausedAt = Date.now();
    // The PATCH rewrote the Redis copy of the rules every worker admits by before it answered; the
    // Postgres guard behind it would refuse too, so this is what shows the cache itself was told.
    expect(await redis.hget(redisKeys().admission(policyId).meta, 'status')).toBe('PAUSED');
    // Requests keep coming for two more seconds: one of grace, one in which nothing may issue.
    await sleep(2_000);
    const before = await first.stop();
    const resumeSentAt = Date.now();

    // (a) No coupon was written later than a second after the pause answered.
    const paused = await couponTimes(policyId);
    expect(paused.length).toBeGreaterThanOrEqual(100);
    expect(paused.length).toBeLessThan(total);
    const lastWritten = Math.max(...paused.map((r) => Math.max(r.issued_at.getTime(), r.created_at.getTime())));
    expect(lastWritten - pausedAt).toBeLessThanOrEqual(1_000);
    expect(before.filter((s) => s.job.status === 'succeeded')).toHaveLength(paused.length);

    // (b) Every request sent through either web after that second was refused POLICY_NOT_ACTIVE.
    const late = before.filter((s) => s.sentAt > pausedAt + 1_000);
    expect(late.filter((s) => s.web === 0).length).toBeGreaterThan(20);
    expect(late.filter((s) => s.web === 1).length).toBeGreaterThan(20);
    expect(new Set(late.map((s) => s.job.reason?.code ?? s.job.status))).toEqual(new Set(['POLICY_NOT_ACTIVE']));
    // Requests in flight at the pause either issued or were refused (their slots given back).
    expect([...new Set(before.map((s) => s.job.reason?.code ?? s.job.status))].sort()).toEqual(['POLICY_NOT_ACTIVE', 'succeeded']);

    // (c) After a resume through the other web the sale goes on, up to the quantity and no further.
    const resume = await webs[1].patch(`/api/v1/coupons/policies/${policyId}`, admin, { status: 'ACTIVE' });
    expect(resume.status).toBe(200);
    const second = startSale(policyId);
    await eventually(
      () => countOf(policyId),
      (n) => n >= total,
      20_000,
      'the rest sold',
    );
    await sleep(300);
    const after = await second.stop();
    expect(new Set(after.map((s) => s.job.reason?.code ?? s.job.status))).toEqual(new Set(['succeeded', 'SOLD_OUT']));

    const rows = await couponTimes(policyId);
    expect(rows).toHaveLength(total);
    expect(rows.map((r) => r.slot)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    expect(new Set(rows.map((r) => r.user_id)).size).toBe(total);
    expect(rows.filter((r) => r.created_at.getTime() > pausedAt + 1_000 && r.created_at.getTime() < resumeSentAt)).toEqual([]);
    const winners = [...before, ...after].filter((s) => s.job.status === 'succeeded').map((s) => s.user);
    expect(new Set(winners)).toEqual(new Set(rows.map((r) => r.user_id)));
    // The admission state agrees: every refused admission gave its slot back, none is left pending.
    const k = redisKeys().admission(policyId);
    expect(await redis.hget(k.stock, 'issued')).toBe(String(total));
    expect(await redis.hlen(k.pending)).toBe(0);
  }, 60_000);
});

describe('the policy cache of every process', () => {
  it('sees a shared code created through one web within a second, in this process and through the other web', async () => {
    const code = `FRESH${uniqueId('x').slice(2, 10).toUpperCase()}`;
    // The other web and this process hold a loaded snapshot that does not know the code yet.
    expect(await policyCache.sharedCodePolicy(code)).toBeNull();
    const probe = await webs[1].post('/api/v1/coupons/issue', await tokenFor(uniqueId('probe')), { code: `NOT${code}` });
    expect(probe.status).toBe(202);

    const user = uniqueId('sc');
    const token = await tokenFor(user);
    const policyId = await createPolicy(webs[0], { issueMethod: 'CODE', code, totalQuantity: 10 });
    const createdAt = Date.now();
    expect(await msUntil(() => policyCache.sharedCodePolicy(code), policyId, createdAt)).toBeLessThan(1_000);

    // Sent within the second: the other web resolves the code from a snapshot told of the change.
    const sentAt = Date.now();
    const reply = await webs[1].post('/api/v1/coupons/issue', token, { code: code.toLowerCase() });
    expect(sentAt - createdAt).toBeLessThan(1_000);
    const job = await webs[1].settle(reply.body.jobId, token);
    expect(job.status).toBe('succeeded');
    expect(job.result.policyId).toBe(policyId);
  });

  it("sees an EVENT policy's creation, pause and resume within a second, in this process and in both workers", async () => {
    const trigger = `JOINED_${uniqueId('x').slice(2, 10).toUpperCase()}`;
    const policyId = await createPolicy(webs[1], { issueMethod: 'EVENT', triggerEvent: trigger, totalQuantity: null });
    const createdAt = Date.now();
    const triggered = async () => (await policyCache.eventPolicies(trigger)).includes(policyId);
    expect(await msUntil(triggered, true, createdAt)).toBeLessThan(1_000);

    // Sends events of the type, each answered `policies`, until both workers have handled one of them
    // (so both hold the policy in a loaded snapshot); the ids of the events sent.
    const untilEachWorkerHandled = async (policies: unknown, what: string) => {
      const sent = new Set<string>();
      const handledBy = () =>
        stack.workers.map((_, i) =>
          stackLogLines(`worker-${i + 1}`).some((l) => l.msg === 'user event processed' && sent.has(String(l.eventId))),
        );
      await eventually(
        async () => {
          const event = await userEvent(trigger);
          expect(event.policies).toEqual(policies);
          sent.add(event.eventId);
          return handledBy();
        },
        (by) => by.every(Boolean),
        20_000,
        what,
      );
      return sent;
    };
    const warm = await untilEachWorkerHandled(
      [expect.objectContaining({ policyId, outcome: 'issued' })],
      'an event handled by each worker',
    );

    // Paused through one web: events right after trigger nothing, in whichever worker.
    expect((await webs[0].patch(`/api/v1/coupons/policies/${policyId}`, admin, { status: 'PAUSED' })).status).toBe(200);
    const pausedAt = Date.now();
    // The PATCH rewrote the Redis copy of the rules every worker admits by before it answered; the
    // Postgres guard behind it would refuse too, so this is what shows the cache itself was told.
    expect(await redis.hget(redisKeys().admission(policyId).meta, 'status')).toBe('PAUSED');
    expect(await msUntil(triggered, false, pausedAt)).toBeLessThan(1_000);
    await untilEachWorkerHandled([], 'a paused-time event handled by each worker');

    // Resumed through the other web: triggered again at once.
    expect((await webs[1].patch(`/api/v1/coupons/policies/${policyId}`, admin, { status: 'ACTIVE' })).status).toBe(200);
    const resumedAt = Date.now();
    expect(await msUntil(triggered, true, resumedAt)).toBeLessThan(1_000);
    const resumed = await Promise.all([0, 1, 2, 3].map(() => userEvent(trigger)));
    for (const { policies } of resumed) expect(policies).toEqual([expect.objectContaining({ policyId, outcome: 'issued' })]);
    expect(await countOf(policyId)).toBe(warm.size + resumed.length);
  });

  it('warms a worker started after the policies exist before it takes a job, with the ACTIVE ones only', async () => {
    const active = await createPolicy(webs[0], { totalQuantity: 10 });
    const paused = await createPolicy(webs[0], { totalQuantity: 10 });
    expect((await webs[0].patch(`/api/v1/coupons/policies/${paused}`, admin, { status: 'PAUSED' })).status).toBe(200);
    const code = `WARM${uniqueId('x').slice(2, 10).toUpperCase()}`;
    await createPolicy(webs[0], { issueMethod: 'CODE', code, totalQuantity: 10 });
    await createPolicy(webs[0], {
      issueMethod: 'EVENT',
      triggerEvent: `WARMED_${uniqueId('x').slice(2, 10).toUpperCase()}`,
      totalQuantity: null,
    });
    // As if the five-minute TTL of their admission rules had run out.
    await redis.del(redisKeys().admission(active).meta, redisKeys().admission(paused).meta);

    await stack.startWorker();
    const name = `worker-${stack.workers.length}`;
    // "worker started" comes after the warm-up and before the worker takes any job.
    expect(await redis.hget(redisKeys().admission(active).meta, 'status')).toBe('ACTIVE');
    expect(await redis.exists(redisKeys().admission(paused).meta)).toBe(0);
    // The log reaches its file through a pipe: wait until the ready line is there too.
    const lines = await eventually(
      async () => stackLogLines(name),
      (l) => l.some((x) => x.msg === 'worker started'),
      5_000,
      'the worker log on disk',
    );
    const admission = lines.find((l) => l.msg === 'admission state warmed with the ACTIVE policies');
    const lookups = lines.find((l) => l.msg === 'policy cache warmed with the shared codes and ACTIVE EVENT policies');
    expect(admission?.policies).toBeGreaterThanOrEqual(2);
    expect(lookups?.sharedCodes).toBeGreaterThanOrEqual(1);
    expect(lookups?.triggers).toBeGreaterThanOrEqual(1);
    const order = lines.map((l) => l.msg);
    expect(order.indexOf('policy cache warmed with the shared codes and ACTIVE EVENT policies')).toBeLessThan(
      order.indexOf('worker started'),
    );
    expect(order.indexOf('admission state warmed with the ACTIVE policies')).toBeLessThan(order.indexOf('worker started'));

    // A web warms its own lookups (the shared codes it resolves) at start; the admission state is the workers'.
    const web = stackLogLines('web-2');
    expect(web.find((l) => l.msg === 'policy cache warmed with the shared codes and ACTIVE EVENT policies')).toMatchObject({
      sharedCodes: expect.any(Number),
      triggers: expect.any(Number),
    });
    expect(web.map((l) => l.msg)).not.toContain('admission state warmed with the ACTIVE policies');
  });
});
