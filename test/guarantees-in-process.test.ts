// Documented guarantees whose fault must be staged exactly: the web app and the admission scripts
// in-process, against the real Postgres and Redis, with hand-made workers where a worker must fail
// at a chosen step. The ones shown through the real processes are in guarantees.test.ts.
import { randomUUID } from 'node:crypto';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { config } from '../src/core/config';
import { sequelize } from '../src/core/postgres';
import { createRedis } from '../src/core/redis';
import { redisKeys } from '../src/core/redis-keys';
import { insertIssuedCoupon } from '../src/storage/coupon';
import { CouponPolicy, policyRowFromCreate } from '../src/storage/policy';
import { policyCreateSchema } from '../src/domain/policy-rules';
import { publishOutcomes } from '../src/queues/outcomes';
import { parseRequestId } from '../src/queues/names';
import { admitOnce, openStock, writePolicyMeta } from '../src/storage/admission/admission';
import { startTestApp, type TestApp } from './support/app';
import { eventually } from './support/checkout';
import { closeDb } from './support/db';
import { policyBody, uniqueId } from './support/fixtures';
import { adminToken, tokenFor } from './support/tokens';

// Queues and admission state of their own, so no worker of another test takes these jobs.
const sharedPrefix = process.env.QUEUE_PREFIX;
const prefix = uniqueId('guar');
let local: TestApp;
let redis: Redis;

beforeAll(async () => {
  process.env.QUEUE_PREFIX = prefix;
  expect(config().QUEUE_PREFIX).toBe(prefix);
  local = await startTestApp();
  redis = createRedis('client');
});

afterAll(async () => {
  redis?.disconnect();
  await local?.close();
  await closeDb();
  process.env.QUEUE_PREFIX = sharedPrefix;
});

describe('set-meta.lua', () => {
  it('keeps the newer version of a policy against a stale write, and takes a newer one', async () => {
    const policy = await CouponPolicy.create(
      policyRowFromCreate(randomUUID(), policyCreateSchema.parse(policyBody({ totalQuantity: 10 }))),
    );
    await writePolicyMeta(redis, policy);
    await openStock(redis, policy.id);
    // A worker read the policy from Postgres just before an admin paused it...
    const stale = (await CouponPolicy.findByPk(policy.id)) as CouponPolicy;
    await policy.update({ status: 'PAUSED' });
    await policy.reload();
    expect(policy.version).toBeGreaterThan(stale.version);
    await writePolicyMeta(redis, policy);
    // ...and writes its copy after the admin's: the pause stays.
    await writePolicyMeta(redis, stale);
    const meta = redisKeys().admission(policy.id).meta;
    expect(await redis.hmget(meta, 'status', 'version')).toEqual(['PAUSED', String(policy.version)]);
    const ask = () => admitOnce(redis, policy.id, ['FIRST_COME'], [{ requestId: `iss_${randomUUID()}.0`, userId: uniqueId('u') }], false);
    expect(await ask()).toMatchObject([{ kind: 'refused', code: 'POLICY_NOT_ACTIVE' }]);

    // A newer version still replaces it (the script writes, it does not merely refuse).
    await policy.update({ status: 'ACTIVE' });
    await policy.reload();
    await writePolicyMeta(redis, policy);
    expect(await redis.hmget(meta, 'status', 'version')).toEqual(['ACTIVE', String(policy.version)]);
    expect(await redis.pttl(meta)).toBeGreaterThan(0);
    expect(await ask()).toMatchObject([{ kind: 'admitted', slot: 1 }]);
  });
});

describe('the job view of an issue request whose batch ended without storing its outcome', () => {
  const DAY_MS = 24 * 3600 * 1000;
  type Fate = 'written, batch failed' | 'written, batch removed' | 'written, told failed' | 'not written, batch failed';
  const fates: Fate[] = ['written, batch failed', 'written, batch removed', 'written, told failed', 'not written, batch failed'];

  /**
   * What a worker does to each batch here, by the fate of its one request: writes the coupon (the
   * same insert the issue processor makes) or not, then fails the batch as a whole, or stores
   * `failed` for the request and completes it (the answer of an insert that committed unseen).
   */
  const failingWorker = (policyId: string, fateOf: Map<string, Fate>, connection: Redis) =>
    new Worker(
      'issue',
      async (job: Job) => {
        const request = (job.data as { requests: { requestId: string; userId: string }[] }).requests[0]!;
        const fate = fateOf.get(request.userId)!;
        if (fate.startsWith('written')) {
          const at = new Date();
          const written = await insertIssuedCoupon(sequelize(), {
            policyId,
            userId: request.userId,
            slot: null,
            requestId: request.requestId,
            issuedAt: at,
            expiresAt: new Date(at.getTime() + DAY_MS),
          });
          if (written instanceof Error || written.kind !== 'inserted') throw new Error(`coupon not written: ${String(written)}`);
        }
        if (fate !== 'written, told failed') throw new UnrecoverableError('the batch failed as a whole');
        const reason = { code: 'INTERNAL', message: 'The request failed after retries.' };
        const index = parseRequestId(request.requestId).index as number;
        await publishOutcomes(redis, String(job.id), [
          [index, { s: 'failed', u: request.userId, c: job.timestamp, f: Date.now(), e: reason }],
        ]);
        return { results: [{ outcome: 'failed', reason }] };
      },
      { connection, prefix },
    );

  it('answers succeeded with the coupon Postgres holds, and failed only when Postgres holds none', async () => {
    const admin = await adminToken();
    const created = await local.call('POST', '/api/v1/coupons/policies', {
      token: admin,
      body: policyBody({ issueMethod: 'DOWNLOAD', totalQuantity: null }),
    });
    expect(created.status).toBe(201);
    const policyId = created.body.id as string;
    const users = fates.map((fate) => ({ fate, id: uniqueId('u'), token: '', requestId: '' }));
    for (const u of users) {
      u.token = await tokenFor(u.id);
      const reply = await local.call('POST', '/api/v1/coupons/issue', { token: u.token, body: { policyId } });
      expect(reply.status).toBe(202);
      u.requestId = reply.body.jobId as string;
    }
    const connection = createRedis('worker');
    const worker = failingWorker(policyId, new Map(users.map((u) => [u.id, u.fate])), connection);
    const queue = local.queues.get('issue');
    try {
      const jobOf = (u: (typeof users)[number]) => queue.getJob(parseRequestId(u.requestId).jobId);
      for (const u of users)
        await eventually(
          () => jobOf(u),
          (job) => Boolean(job?.finishedOn),
          30_000,
          `the batch of ${u.fate}`,
        );
      await (await jobOf(users[1]!))!.remove();
    } finally {
      await worker.close();
      connection.disconnect();
    }

    const view = async (u: (typeof users)[number]) => (await local.call('GET', `/api/v1/jobs/${u.requestId}`, { token: u.token })).body;
    const coupon = async (u: (typeof users)[number]) =>
      (await local.call('GET', `/api/v1/coupons/users/${u.id}`, { token: u.token })).body.data;
    for (const u of users.slice(0, 3)) {
      // A removed batch is told apart from one not added yet by the age of the request's record.
      const answer = await eventually(
        () => view(u),
        (v) => v.status !== 'pending',
        15_000,
        `the view of ${u.fate}`,
      );
      const [held] = await coupon(u);
      expect({ fate: u.fate, answer }).toMatchObject({
        fate: u.fate,
        answer: { id: u.requestId, status: 'succeeded', result: { id: held.id, status: 'AVAILABLE' } },
      });
      expect(answer.reason).toBeUndefined();
    }
    const unwritten = users[3]!;
    expect(await coupon(unwritten)).toEqual([]);
    expect(await view(unwritten)).toMatchObject({ status: 'failed', reason: { code: 'INTERNAL' } });
  });
});
