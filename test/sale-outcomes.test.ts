// A flash sale told in one round trip: with `Prefer: wait` every shopper learns win or lose in the
// answer to the POST; refusals are decided by the web and never become jobs; a poll reads only its
// own request's outcome; SOLD_OUT is told only when no unit can come back; and a client whose web
// died while it waited gets the same outcome when it retries with its Idempotency-Key.
import { randomUUID } from 'node:crypto';
import { fingerprint } from '../src/web/idempotency';
import { redisKeysUnder } from '../src/core/redis-keys';
import { issueIdempotencyRecordKey, parseRequestId } from '../src/queues/names';

/** The stack's Redis keys (its processes have a QUEUE_PREFIX of their own). */
const keys = () => redisKeysUnder(stack.queuePrefix);
/** An issue Idempotency-Key's Redis record, in the stack's namespace. */
const keyRecordOf = (user: string, key: string) => issueIdempotencyRecordKey(user, key, keys());
import IORedis from 'ioredis';
import { Queue, type Job } from 'bullmq';
import { Api, mapLimit } from './support/http';
import { jobsCarrying } from './support/jobs';
import { closeDb, couponsOf } from './support/db';
import { policyBody, uniqueId } from './support/fixtures';
import { startStack, type Stack } from './support/stack';
import { adminToken, tokenFor } from './support/tokens';
import { withAdmissionScripts } from '../src/storage/admission/scripts';

let stack: Stack;
let api: Api;
let admin: string;
let redis: IORedis;

beforeAll(async () => {
  stack = await startStack({ workers: 2, name: 'sale-outcomes' });
  api = new Api(stack.baseUrl, 256);
  admin = await adminToken();
  redis = new IORedis(process.env.REDIS_URL as string);
});

afterAll(async () => {
  redis?.disconnect();
  await api?.close();
  await stack?.stop();
  await closeDb();
});

async function createPolicy(totalQuantity: number): Promise<string> {
  const reply = await api.post('/api/v1/coupons/policies', admin, policyBody({ totalQuantity }));
  expect(reply.status).toBe(201);
  return reply.body.id as string;
}

const WAIT = { prefer: 'wait=10' };

/** An issue request with `Prefer: wait` under an Idempotency-Key. */
const askUnderKey = (token: string, body: object, key: string) =>
  api.call('POST', '/api/v1/coupons/issue', { token, body, headers: { ...WAIT, 'idempotency-key': key } });

/** The admission keys of a policy in the stack's Redis (src/storage/admission/keys.ts). */
const admissionKeys = (policyId: string) => keys().admission(policyId);

/** Requests for a policy carried by issue jobs that wait in the queue. */
async function queuedRequestsOf(policyId: string): Promise<number> {
  const queue = new Queue('issue', { connection: redis, prefix: stack.queuePrefix });
  const jobs = await queue.getWaiting(0, 1000);
  return jobs.reduce(
    (n, j) => n + (j.data as { requests: { policyId: string }[] }).requests.filter((r) => r.policyId === policyId).length,
    0,
  );
}

async function carriedRequests(requestIds: string[]): Promise<number> {
  const jobs = (await jobsCarrying(stack.queuePrefix, requestIds)).filter((j): j is Job => j !== undefined);
  return jobs.reduce((n, j) => n + (j.data as { requests: unknown[] }).requests.length, 0);
}

describe('a flash sale told in one round trip', () => {
  it('answers 600 shoppers racing for 60 coupons with their final outcome in the POST; losers never become jobs', async () => {
    const policyId = await createPolicy(60);
    const users = Array.from({ length: 600 }, (_, i) => uniqueId(`ow${i}`));
    const tokens = new Map(await Promise.all(users.map(async (u) => [u, await tokenFor(u)] as const)));
    const replies = await Promise.all(
      users.map(async (user) => ({
        user,
        reply: await api.call('POST', '/api/v1/coupons/issue', { token: tokens.get(user), body: { policyId }, headers: WAIT }),
      })),
    );

    // One round trip each: a finished view, never a 202 to poll.
    expect(replies.filter(({ reply }) => reply.status !== 200).map(({ reply }) => reply.status)).toEqual([]);
    for (const { reply } of replies) expect(reply.headers['preference-applied']).toBe('wait=10');
    const won = replies.filter(({ reply }) => reply.body.status === 'succeeded');
    const lost = replies.filter(({ reply }) => reply.body.status === 'rejected');
    expect(won).toHaveLength(60);
    expect(lost).toHaveLength(540);
    expect(new Set(lost.map(({ reply }) => reply.body.reason.code))).toEqual(new Set(['SOLD_OUT']));

    // Win means committed: the users told "won" are exactly the users holding a coupon, with its id.
    const rows = await couponsOf(policyId);
    expect(rows).toHaveLength(60);
    expect(new Set(rows.map((r) => r.user_id))).toEqual(new Set(won.map((w) => w.user)));
    const byUser = new Map(rows.map((r) => [r.user_id, r.id]));
    for (const { user, reply } of won) expect(reply.body.result.id).toBe(byUser.get(user));
    expect(rows.map((r) => r.slot).sort((a, b) => Number(a) - Number(b))).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));

    // The web refused most requests itself: far fewer than the 600 requests were carried by jobs.
    const carried = await carriedRequests(replies.map(({ reply }) => reply.body.jobId));
    expect(carried).toBeGreaterThanOrEqual(60);
    expect(carried).toBeLessThan(300);
  });

  it("reads a request's own outcome on a poll, for its owner only", async () => {
    const policyId = await createPolicy(1);
    const [winner, loser] = [uniqueId('poll-w'), uniqueId('poll-l')];
    const first = await api.post('/api/v1/coupons/issue', await tokenFor(winner), { policyId });
    expect(first.status).toBe(202);
    const won = await api.settle(first.body.jobId, await tokenFor(winner));
    const second = await api.post('/api/v1/coupons/issue', await tokenFor(loser), { policyId });
    expect(second.status).toBe(202);

    const lostView = await api.get(`/api/v1/jobs/${second.body.jobId}?waitMs=5000`, await tokenFor(loser));
    expect(lostView.status).toBe(200);
    expect(lostView.body).toMatchObject({ id: second.body.jobId, type: 'issue', status: 'rejected', reason: { code: 'SOLD_OUT' } });
    expect(lostView.body.finishedAt).toEqual(expect.any(String));
    expect(won).toMatchObject({ id: first.body.jobId, status: 'succeeded', result: { policyId, userId: winner, status: 'AVAILABLE' } });

    // Someone else's request is not theirs to read; an admin may.
    expect((await api.get(`/api/v1/jobs/${first.body.jobId}`, await tokenFor(loser))).status).toBe(403);
    expect((await api.get(`/api/v1/jobs/${first.body.jobId}`, admin)).body.status).toBe('succeeded');
    // A request index its batch never had is nobody's.
    const [batch] = first.body.jobId.split('.');
    expect((await api.get(`/api/v1/jobs/${batch}.127`, admin)).status).toBe(404);

    // A poll never reads the batch job: with the batch's requests and results made unreadable, each
    // request still answers from its own outcome record.
    const queue = new Queue('issue', { connection: redis, prefix: stack.queuePrefix });
    let spoiled = 0;
    try {
      for (const id of [first.body.jobId, second.body.jobId]) {
        const jobKey = queue.toKey(parseRequestId(String(id)).jobId);
        if ((await redis.exists(jobKey)) === 0) continue;
        await redis.hset(jobKey, 'data', '{not json', 'returnvalue', '{not json');
        spoiled += 1;
      }
    } finally {
      await queue.close();
    }
    // The winner's request was carried by a job (a refusal the web decided never is).
    expect(spoiled).toBeGreaterThanOrEqual(1);
    expect((await api.get(`/api/v1/jobs/${first.body.jobId}`, await tokenFor(winner))).body).toEqual(won);
    expect((await api.get(`/api/v1/jobs/${second.body.jobId}`, await tokenFor(loser))).body).toEqual(lostView.body);
  });

  it('answers from Postgres when a stored outcome cannot be right: a coupon held under a "failed" record, a job that never came', async () => {
    const policyId = await createPolicy(5);
    const user = uniqueId('pg-word');
    const token = await tokenFor(user);
    const won = await api.call('POST', '/api/v1/coupons/issue', { token, body: { policyId }, headers: WAIT });
    expect(won.body.status).toBe('succeeded');
    // Its record says failed (an attempt whose insert committed but whose answer was lost): the coupon wins.
    const [batch, index] = String(won.body.jobId).split('.') as [string, string];
    const key = keys().outcomes(batch);
    const record = JSON.parse((await redis.hget(key, index)) as string);
    await redis.hset(key, index, JSON.stringify({ ...record, s: 'failed', r: undefined, e: { code: 'INTERNAL', message: 'x' } }));
    const read = await api.get(`/api/v1/jobs/${won.body.jobId}`, token);
    expect(read.body).toMatchObject({ status: 'succeeded', result: { id: won.body.result.id } });

    // A pending record whose job is not there: pending while it is young (the add may be on its way),
    // failed once it is older than the reconciler's orphan age, never a 404.
    const orphanBatch = `iss_${randomUUID()}`;
    const young = { s: 'pending', u: user, c: Date.now() };
    await redis.hset(keys().outcomes(orphanBatch), '0', JSON.stringify(young), '1', JSON.stringify({ ...young, c: Date.now() - 60_000 }));
    expect((await api.get(`/api/v1/jobs/${orphanBatch}.0`, token)).body.status).toBe('pending');
    const lost = await api.get(`/api/v1/jobs/${orphanBatch}.1`, token);
    expect(lost.body).toMatchObject({ status: 'failed', reason: { code: 'INTERNAL' } });
    await redis.del(keys().outcomes(orphanBatch));
  });

  it('tells SOLD_OUT only when no unit can come back: a request waits for a pending admission and takes the unit it gives back', async () => {
    const policyId = await createPolicy(1);
    // An admission whose job never came (its web died after admitting): the only unit is held.
    const keys = admissionKeys(policyId);
    const scripts = withAdmissionScripts(redis);
    const stranded = `iss_${randomUUID()}.0`;
    const held = await scripts.admitCoupons(
      keys.meta,
      keys.stock,
      keys.free,
      keys.users,
      keys.pending,
      'FIRST_COME',
      '0',
      stranded,
      uniqueId('ghost'),
    );
    expect(held.slice(3, 5)).toEqual(['ADMITTED', 1]);

    const shopper = uniqueId('patient');
    const token = await tokenFor(shopper);
    const asked = await api.post('/api/v1/coupons/issue', token, { policyId });
    expect(asked.status).toBe(202);
    // The stock is gone but a unit may come back: not SOLD_OUT.
    const meanwhile = await api.get(`/api/v1/jobs/${asked.body.jobId}?waitMs=300`, token);
    expect(meanwhile.body.status).toBe('pending');

    // The stranded admission is given back (as the reconciler does): the waiting request takes it.
    expect(await scripts.releaseCoupon(keys.stock, keys.free, keys.users, keys.pending, stranded, '1')).toBe(1);
    const settled = await api.settle(asked.body.jobId, token);
    expect(settled).toMatchObject({ status: 'succeeded', result: { userId: shopper } });
    const rows = await couponsOf(policyId);
    expect(rows.map((r) => [r.user_id, Number(r.slot)])).toEqual([[shopper, 1]]);

    // Now nothing is pending and nothing is left: the next shopper hears SOLD_OUT at once.
    const late = await api.call('POST', '/api/v1/coupons/issue', {
      token: await tokenFor(uniqueId('late')),
      body: { policyId },
      headers: WAIT,
    });
    expect(late.body).toMatchObject({ status: 'rejected', reason: { code: 'SOLD_OUT' } });
  });

  it('answers a retry under the same Idempotency-Key with the first outcome, and another body under it with 409', async () => {
    const policyId = await createPolicy(5);
    const otherPolicy = await createPolicy(5);
    const user = uniqueId('idem');
    const token = await tokenFor(user);
    const key = randomUUID();
    const ask = (body: object) => askUnderKey(token, body, key);
    const first = await ask({ policyId });
    expect(first.body).toMatchObject({ status: 'succeeded' });
    const again = await ask({ policyId });
    expect(again.status).toBe(200);
    expect(again.body).toMatchObject({ jobId: first.body.jobId, status: 'succeeded', result: { id: first.body.result.id } });
    // Without the key the same user is at the limit; with it under another body, 409.
    const unkeyed = await api.call('POST', '/api/v1/coupons/issue', { token, body: { policyId }, headers: WAIT });
    expect(unkeyed.body).toMatchObject({ status: 'rejected', reason: { code: 'USER_LIMIT_REACHED' } });
    const reused = await ask({ policyId: otherPolicy });
    expect(reused.status).toBe(409);
    expect(reused.body.error.code).toBe('IDEMPOTENCY_KEY_REUSED');
    expect(await couponsOf(policyId)).toHaveLength(1);
    expect(await couponsOf(otherPolicy)).toHaveLength(0);
  });
});

describe('an Idempotency-Key whose first request vanished', () => {
  it('is taken over by a retry once the first request has neither a record nor a job, past the orphan age', async () => {
    const policyId = await createPolicy(3);
    const user = uniqueId('vanished');
    const token = await tokenFor(user);
    const key = randomUUID();
    // A web claimed the key and died before it wrote the request down or queued it.
    const redisKey = keyRecordOf(user, key);
    const lostId = `iss_${randomUUID()}.0`;
    const fp = fingerprint({ policyId, via: 'policy', codeHash: null, userId: user });
    await redis.set(redisKey, `${fp}|${lostId}|${Date.now() - 60_000}`, 'EX', 3600);

    const retry = await askUnderKey(token, { policyId }, key);
    expect(retry.status).toBe(200);
    expect(retry.body.status).toBe('succeeded');
    expect(retry.body.jobId).not.toBe(lostId);
    // The key now names the retry: another retry answers the same.
    const again = await askUnderKey(token, { policyId }, key);
    expect(again.body).toMatchObject({ jobId: retry.body.jobId, status: 'succeeded', result: { id: retry.body.result.id } });
    expect(await couponsOf(policyId)).toHaveLength(1);
  });

  it("is not taken over when Redis lost the first request's record and job but Postgres holds its coupon", async () => {
    const policyId = await createPolicy(3);
    const user = uniqueId('lost-record');
    const token = await tokenFor(user);
    const key = randomUUID();
    const first = await askUnderKey(token, { policyId }, key);
    expect(first.body).toMatchObject({ status: 'succeeded' });
    const requestId = first.body.jobId as string;
    // Redis loses the request's record and its batch job (a restart without its data); the key's
    // claim survives, old enough that its first request would count as never queued.
    const batchJobId = parseRequestId(requestId).jobId;
    const issueQueue = new Queue('issue', { connection: redis, prefix: stack.queuePrefix });
    const batchKey = issueQueue.toKey(batchJobId);
    await issueQueue.close();
    expect(await redis.del(keys().outcomes(batchJobId), batchKey)).toBe(2);
    const redisKey = keyRecordOf(user, key);
    const [fp] = String(await redis.get(redisKey)).split('|');
    await redis.set(redisKey, `${fp}|${requestId}|${Date.now() - 60_000}`, 'EX', 3600);

    // The retry under the key answers the first request, from Postgres, not a new request.
    const retry = await askUnderKey(token, { policyId }, key);
    expect(retry.status).toBe(200);
    expect(retry.body).toMatchObject({ jobId: requestId, status: 'succeeded', result: { id: first.body.result.id } });
    expect(await couponsOf(policyId)).toHaveLength(1);
  });
});

describe('a web process killed while it holds waiting shoppers', () => {
  it('gives each shopper who retries with its Idempotency-Key the outcome its first request had', async () => {
    const policyId = await createPolicy(20);
    const second = await stack.startWeb();
    const doomed = stack.moreWebs.length === 1 ? { baseUrl: second.baseUrl, child: second.web } : null;
    expect(doomed).not.toBeNull();
    const survivor = new Api(stack.baseUrl, 64);
    const victimApi = new Api(doomed!.baseUrl, 64);
    const users = Array.from({ length: 40 }, (_, i) => ({ user: uniqueId(`k${i}`), key: randomUUID() }));
    const tokens = new Map(await Promise.all(users.map(async ({ user }) => [user, await tokenFor(user)] as const)));
    // The workers are stopped, so every request is held waiting in the doomed web.
    for (const worker of stack.workers) worker.kill('SIGSTOP');
    try {
      const inFlight = users.map(({ user, key }) =>
        victimApi
          .call('POST', '/api/v1/coupons/issue', {
            token: tokens.get(user),
            body: { policyId },
            headers: { ...WAIT, 'idempotency-key': key },
          })
          .then(
            (reply) => ({ answered: reply.status }),
            (error: Error) => ({ error: error.message }),
          ),
      );
      // Positive signal: all 40 requests are queued (20 admitted, 20 waiting for a unit to come back).
      const until = Date.now() + 30_000;
      while (Date.now() < until && (await queuedRequestsOf(policyId)) < 40) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(await queuedRequestsOf(policyId)).toBe(40);
      expect(await redis.hlen(admissionKeys(policyId).pending)).toBe(20);
      doomed!.child.kill('SIGKILL');
      const firstAnswers = await Promise.all(inFlight);
      // The kill hit every one of them in flight: none was answered.
      expect(firstAnswers.filter((a) => 'answered' in a)).toEqual([]);
    } finally {
      for (const worker of stack.workers) worker.kill('SIGCONT');
    }

    const retried = await mapLimit(users, 40, async ({ user, key }) => {
      const reply = await survivor.call('POST', '/api/v1/coupons/issue', {
        token: tokens.get(user),
        body: { policyId },
        headers: { ...WAIT, 'idempotency-key': key },
      });
      return { user, reply };
    });
    await victimApi.close().catch(() => undefined);
    await survivor.close();
    for (const { reply } of retried) expect(reply.status).toBe(200);
    const won = retried.filter(({ reply }) => reply.body.status === 'succeeded').map(({ user }) => user);
    const lost = retried.filter(({ reply }) => reply.body.status === 'rejected');
    expect(won).toHaveLength(20);
    expect(lost.map(({ reply }) => reply.body.reason.code)).toEqual(Array(20).fill('SOLD_OUT'));
    const rows = await couponsOf(policyId);
    expect(new Set(rows.map((r) => r.user_id))).toEqual(new Set(won));
    expect(rows).toHaveLength(20);
  });
});
