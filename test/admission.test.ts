// The admission step against real Redis and Postgres: rebuilding lost state, and giving back the
// stock of requests that will never write their coupon.
import { randomUUID } from 'node:crypto';
import { Queue, QueueEvents, Worker, type Job } from 'bullmq';
import { logger } from '../src/core/logger';
import { closeSequelize, sequelize } from '../src/core/postgres';
import { createRedis } from '../src/core/redis';
import { redisKeys } from '../src/core/redis-keys';
import { initModels } from '../src/storage';
import { insertIssuedCoupon } from '../src/storage/coupon';
import { CouponPolicy, policyRowFromCreate } from '../src/storage/policy';
import { policyCreateSchema } from '../src/domain/policy-rules';
import {
  admissionSnapshot,
  admit,
  openStock,
  releaseAdmission,
  settleAdmission,
  writePolicyMeta,
} from '../src/storage/admission/admission';
import { createLocks } from '../src/core/lock';
import { createIssueProcessor } from '../src/worker/issue-queue';
import { ENDED_STATE_GRACE_S, freeEndedPolicies, reconcileAdmissions } from '../src/usecases/reconcile-admissions';
import { storeOutcomes } from '../src/queues/outcomes';
import { issueBatchReturnSchema } from '../src/queues/results';
import { closeDb, couponsOf } from './support/db';
import { policyBody, uniqueId } from './support/fixtures';

const redis = createRedis('client');
const workerConnection = createRedis('worker');
const locks = createLocks(redis);
const log = logger();
const prefix = uniqueId('adm');
const queue = new Queue('issue', { connection: redis, prefix });
const eventsConnection = createRedis('worker');
const events = new QueueEvents('issue', { connection: eventsConnection, prefix });
let worker: Worker;

beforeAll(async () => {
  initModels(sequelize());
  worker = new Worker('issue', createIssueProcessor({ db: sequelize(), redis, locks }, log), {
    connection: workerConnection,
    prefix,
    concurrency: 8,
  });
});

afterAll(async () => {
  await worker.close();
  await events.close();
  await queue.obliterate({ force: true });
  await queue.close();
  redis.disconnect();
  workerConnection.disconnect();
  eventsConnection.disconnect(); // BullMQ leaves a connection it was handed open
  await closeSequelize();
  await closeDb();
});

async function newPolicy(overrides: Record<string, unknown> = {}) {
  const policy = await CouponPolicy.create(policyRowFromCreate(randomUUID(), policyCreateSchema.parse(policyBody(overrides))));
  await writePolicyMeta(redis, policy);
  await openStock(redis, policy.id);
  return policy;
}

/** One request, in a batch job of its own, as the web would queue it; answers the request's outcome. */
async function issue(policyId: string, userId: string) {
  const jobId = `iss_${randomUUID()}`;
  const request = {
    policyId,
    userId,
    actorId: userId,
    traceId: uniqueId('t'),
    requestedAt: new Date().toISOString(),
    requestId: `${jobId}.0`,
  };
  const job = await queue.add('issue-batch', { requests: [request] }, { jobId, attempts: 3 });
  await job.waitUntilFinished(events, 30_000).catch(() => undefined);
  const outcome = issueBatchReturnSchema.parse((await queue.getJob(jobId))?.returnvalue).results[0]!;
  return { outcome: outcome.outcome, reason: outcome.outcome === 'succeeded' ? undefined : outcome.reason };
}

describe('admission state', () => {
  it('rebuilds stock, free slots and per-user counts from Postgres after Redis loses them', async () => {
    const policy = await newPolicy({ totalQuantity: 6 });
    const early = ['a', 'b', 'c'].map((u) => uniqueId(u));
    for (const user of early) expect((await issue(policy.id, user)).outcome).toBe('succeeded');

    const k = redisKeys().admission(policy.id);
    await redis.del(k.stock, k.free, k.users, k.pending); // as if Redis restarted empty

    // A winner asking again is still refused, and the remaining three units go to new users only.
    expect((await issue(policy.id, early[0] as string)).reason?.code).toBe('USER_LIMIT_REACHED');
    const late = Array.from({ length: 5 }, (_, i) => uniqueId(`late${i}`));
    const outcomes = await Promise.all(late.map((u) => issue(policy.id, u)));
    expect(outcomes.filter((o) => o.outcome === 'succeeded')).toHaveLength(3);
    expect(outcomes.filter((o) => o.reason?.code === 'SOLD_OUT')).toHaveLength(2);

    const rows = await couponsOf(policy.id);
    expect(rows.map((r) => r.slot)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(new Set(rows.map((r) => r.user_id)).size).toBe(6);
    expect(await admissionSnapshot(redis, policy.id)).toEqual({ next: 7, issued: 6, freeSlots: 0, pending: 0 });
  });

  it('gives back the slot of an admission whose job is gone and whose coupon was never written', async () => {
    const policy = await newPolicy({ totalQuantity: 2 });
    const lost = await admit(
      { db: sequelize(), redis, locks },
      { policyId: policy.id, requestId: `iss_${randomUUID()}`, userId: uniqueId('lost'), methods: ['FIRST_COME'] },
    );
    expect(lost).toMatchObject({ kind: 'admitted', slot: 1 });

    const report = await reconcileAdmissions({ db: sequelize(), redis, locks, issueQueue: queue, log }, 0);
    expect(report.released).toBeGreaterThanOrEqual(1);
    expect(await admissionSnapshot(redis, policy.id)).toEqual({ next: 2, issued: 0, freeSlots: 1, pending: 0 });

    // Both units are still there for real requests: the given-back slot first.
    const winners = await Promise.all([uniqueId('x'), uniqueId('y'), uniqueId('z')].map((u) => issue(policy.id, u)));
    expect(winners.filter((o) => o.outcome === 'succeeded')).toHaveLength(2);
    expect((await couponsOf(policy.id)).map((r) => r.slot)).toEqual([1, 2]);
  });

  it('gives back within seconds, not lock periods, the slot of an admission whose job was never added; keeps a young one whose job exists', async () => {
    const policy = await newPolicy({ totalQuantity: 2 });
    // A web process admitted a request and died before adding its job.
    const orphan = await admit(
      { db: sequelize(), redis, locks },
      { policyId: policy.id, requestId: `iss_${randomUUID()}.0`, userId: uniqueId('orphan'), methods: ['FIRST_COME'] },
    );
    expect(orphan).toMatchObject({ kind: 'admitted', slot: 1 });
    // Another admitted request whose job is queued (delayed, so no worker takes it during the test).
    const liveJob = `iss_${randomUUID()}`;
    const liveUser = uniqueId('live');
    await queue.add('issue-batch', { requests: [] }, { jobId: liveJob, delay: 60_000 });
    expect(
      await admit(
        { db: sequelize(), redis, locks },
        { policyId: policy.id, requestId: `${liveJob}.0`, userId: liveUser, methods: ['FIRST_COME'] },
      ),
    ).toMatchObject({ kind: 'admitted', slot: 2 });

    // Two lock periods have not passed for either, but the orphan's job does not exist at all.
    const report = await reconcileAdmissions({ db: sequelize(), redis, locks, issueQueue: queue, log }, 60_000, 0);
    expect(report).toMatchObject({ released: 1, settled: 0 });
    expect(await admissionSnapshot(redis, policy.id)).toEqual({ next: 3, issued: 1, freeSlots: 1, pending: 1 });
    await (await queue.getJob(liveJob))?.remove();
  });

  it('drops the admission state of an ended policy once nothing of it is pending, and never rebuilds it for late requests', async () => {
    const policy = await newPolicy({ totalQuantity: 5 });
    for (const user of ['a', 'b', 'c']) expect((await issue(policy.id, uniqueId(user))).outcome).toBe('succeeded');
    const held = `iss_${randomUUID()}`;
    expect(
      await admit(
        { db: sequelize(), redis, locks },
        { policyId: policy.id, requestId: held, userId: uniqueId('held'), methods: ['FIRST_COME'] },
      ),
    ).toMatchObject({ kind: 'admitted' });
    await policy.update({ status: 'ENDED' });
    await writePolicyMeta(redis, policy);
    const k = redisKeys().admission(policy.id);
    const stateKeys = () => redis.exists(k.stock, k.free, k.users, k.pending);
    const tracked = () => redis.sismember(redisKeys().admissionPolicies(), policy.id);

    // An admission still pending keeps the state (and the policy tracked) until it is settled or released.
    expect(await freeEndedPolicies({ db: sequelize(), redis }, [policy.id])).toBe(0);
    expect(await stateKeys()).toBeGreaterThanOrEqual(3);
    expect(await tracked()).toBe(1);
    expect(await releaseAdmission(redis, policy.id, held, true)).toBe(true);
    expect(await freeEndedPolicies({ db: sequelize(), redis }, [policy.id])).toBe(1);
    expect(await stateKeys()).toBe(0);
    expect(await tracked()).toBe(0);

    // A late request is refused from the policy's rules; nothing is rebuilt for it.
    expect((await issue(policy.id, uniqueId('late'))).reason?.code).toBe('POLICY_NOT_ACTIVE');
    expect(await stateKeys()).toBe(0);
    expect(await couponsOf(policy.id)).toHaveLength(3);
  });

  it("drops the state of a policy whose issue window closed past the grace, and keeps an open one's", async () => {
    const closed = await newPolicy({ totalQuantity: 5 });
    const open = await newPolicy({ totalQuantity: 5 });
    for (const policy of [closed, open]) expect((await issue(policy.id, uniqueId('u'))).outcome).toBe('succeeded');
    await sequelize().query(
      `UPDATE coupon_policies SET issue_starts_at = now() - interval '2 days', issue_ends_at = now() - make_interval(secs => $2) WHERE id = $1`,
      {
        bind: [closed.id, ENDED_STATE_GRACE_S + 60],
      },
    );
    expect(await freeEndedPolicies({ db: sequelize(), redis }, [closed.id, open.id])).toBe(1);
    expect(await redis.exists(redisKeys().admission(closed.id).users)).toBe(0);
    expect(await redis.exists(redisKeys().admission(open.id).users)).toBe(1);
    expect(await admissionSnapshot(redis, open.id)).toEqual({ next: 2, issued: 1, freeSlots: 0, pending: 0 });
  });

  it('keeps, on a rerun of a batch, the outcomes its first run told: a shopper told SOLD_OUT is not issued a unit that came back', async () => {
    const policy = await newPolicy({ totalQuantity: 1 });
    const jobId = `iss_${randomUUID()}`;
    const user = uniqueId('told');
    const requestedAt = new Date().toISOString();
    const request = { policyId: policy.id, userId: user, actorId: user, traceId: uniqueId('t'), requestedAt, requestId: `${jobId}.0` };
    // The first run told SOLD_OUT and died before completing the job; a unit is free now.
    await storeOutcomes(redis, jobId, [
      [0, { s: 'rejected', u: user, c: Date.now(), f: Date.now(), e: { code: 'SOLD_OUT', message: 'gone' } }],
    ]);
    const rerun = {
      id: jobId,
      name: 'issue-batch',
      data: { requests: [request] },
      attemptsStarted: 2,
      attemptsMade: 0,
      opts: { attempts: 5 },
    } as unknown as Job;
    const result = issueBatchReturnSchema.parse(await createIssueProcessor({ db: sequelize(), redis, locks }, log)(rerun));
    expect(result.results).toEqual([{ outcome: 'rejected', reason: { code: 'SOLD_OUT', message: 'gone' } }]);
    expect(await couponsOf(policy.id)).toEqual([]);
    expect(await admissionSnapshot(redis, policy.id)).toMatchObject({ issued: 0, pending: 0 });
  });

  it('settles, without giving back, an admission whose coupon reached Postgres', async () => {
    const policy = await newPolicy({ totalQuantity: 2 });
    const requestId = `iss_${randomUUID()}`;
    const userId = uniqueId('kept');
    const admitted = await admit({ db: sequelize(), redis, locks }, { policyId: policy.id, requestId, userId, methods: ['FIRST_COME'] });
    expect(admitted.kind).toBe('admitted');
    const now = new Date();
    await insertIssuedCoupon(sequelize(), {
      policyId: policy.id,
      userId,
      slot: 1,
      requestId,
      issuedAt: now,
      expiresAt: new Date(now.getTime() + 86_400_000),
    });

    const report = await reconcileAdmissions({ db: sequelize(), redis, locks, issueQueue: queue, log }, 0);
    expect(report.settled).toBeGreaterThanOrEqual(1);
    expect(await admissionSnapshot(redis, policy.id)).toEqual({ next: 2, issued: 1, freeSlots: 0, pending: 0 });
  });

  it('gives back the second slot of a request admitted afresh after its coupon was written', async () => {
    const policy = await newPolicy({ totalQuantity: 3 });
    const requestId = `iss_${randomUUID()}`;
    const userId = uniqueId('twice');
    const first = await admit({ db: sequelize(), redis, locks }, { policyId: policy.id, requestId, userId, methods: ['FIRST_COME'] });
    expect(first).toMatchObject({ kind: 'admitted', slot: 1, resumed: false });
    const now = new Date();
    await insertIssuedCoupon(sequelize(), {
      policyId: policy.id,
      userId,
      slot: 1,
      requestId,
      issuedAt: now,
      expiresAt: new Date(now.getTime() + 86_400_000),
    });
    await settleAdmission(redis, policy.id, requestId, 1);
    // A zombie run of the same request, resumed after the settle, is admitted again with slot 2 ...
    const zombie = await admit(
      { db: sequelize(), redis, locks },
      { policyId: policy.id, requestId, userId: `${userId}-z`, methods: ['FIRST_COME'] },
    );
    expect(zombie).toMatchObject({ kind: 'admitted', slot: 2 });
    // ... and settling against the coupon's slot 1 gives slot 2 back instead of losing it.
    await settleAdmission(redis, policy.id, requestId, 1);
    expect(await admissionSnapshot(redis, policy.id)).toEqual({ next: 3, issued: 1, freeSlots: 1, pending: 0 });
  });

  it('writes coupons asked for together in one statement, with each row its own outcome', async () => {
    const policy = await newPolicy({ totalQuantity: 3, perUserLimit: 1 });
    const now = new Date();
    const base = { policyId: policy.id, issuedAt: now, expiresAt: new Date(now.getTime() + 86_400_000) };
    const alice = uniqueId('alice');
    const committedRequest = randomUUID();
    await insertIssuedCoupon(sequelize(), { ...base, userId: uniqueId('early'), slot: 3, requestId: committedRequest });
    // One turn of the event loop: these five travel together.
    const outcomes = await Promise.all([
      insertIssuedCoupon(sequelize(), { ...base, userId: alice, slot: 1, requestId: randomUUID() }),
      insertIssuedCoupon(sequelize(), { ...base, userId: alice, slot: 2, requestId: randomUUID() }), // alice's second: over the limit
      insertIssuedCoupon(sequelize(), { ...base, userId: uniqueId('bob'), slot: 1, requestId: randomUUID() }), // slot 1 taken
      insertIssuedCoupon(sequelize(), { ...base, userId: uniqueId('carol'), slot: 4, requestId: randomUUID() }), // beyond the quantity
      insertIssuedCoupon(sequelize(), { ...base, userId: uniqueId('late'), slot: 2, requestId: committedRequest }), // a rerun
    ]);
    expect(outcomes.map((o) => o.kind)).toEqual(['inserted', 'user-limit', 'slot-taken', 'slot-taken', 'duplicate-request']);
    const rerun = outcomes[4] as { coupon: { slot: number | null } };
    expect(rerun.coupon.slot).toBe(3);
    expect((await couponsOf(policy.id)).map((r) => r.slot)).toEqual([1, 3]);
  });

  it('lets Postgres refuse a coupon of a paused policy even when Redis admitted it', async () => {
    const policy = await newPolicy({ totalQuantity: 5 });
    await policy.update({ status: 'PAUSED' });
    const now = new Date();
    const outcome = await insertIssuedCoupon(sequelize(), {
      policyId: policy.id,
      userId: uniqueId('p'),
      slot: 1,
      requestId: randomUUID(),
      issuedAt: now,
      expiresAt: new Date(now.getTime() + 86_400_000),
    });
    expect(outcome.kind).toBe('policy-inactive');
  });

  it('lets Postgres refuse a slot beyond the quantity and a second coupon over the user limit', async () => {
    const policy = await newPolicy({ totalQuantity: 1 });
    const now = new Date();
    const base = { policyId: policy.id, issuedAt: now, expiresAt: new Date(now.getTime() + 86_400_000) };
    expect((await insertIssuedCoupon(sequelize(), { ...base, userId: uniqueId('u'), slot: 2, requestId: randomUUID() })).kind).toBe(
      'slot-taken',
    );
    const user = uniqueId('u');
    expect((await insertIssuedCoupon(sequelize(), { ...base, userId: user, slot: 1, requestId: randomUUID() })).kind).toBe('inserted');
    expect((await insertIssuedCoupon(sequelize(), { ...base, userId: uniqueId('v'), slot: 1, requestId: randomUUID() })).kind).toBe(
      'slot-taken',
    );
    const unlimited = await newPolicy({ issueMethod: 'DOWNLOAD', totalQuantity: null, perUserLimit: 1 });
    const again = { ...base, policyId: unlimited.id, userId: user, slot: null };
    expect((await insertIssuedCoupon(sequelize(), { ...again, requestId: randomUUID() })).kind).toBe('inserted');
    expect((await insertIssuedCoupon(sequelize(), { ...again, requestId: randomUUID() })).kind).toBe('user-limit');
  });
});
