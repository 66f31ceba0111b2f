// A web's turn admits requests (their slots taken in Redis), then loses Redis before it can store
// their records or add their batch job: it answers 503, and cannot give the slots back while Redis
// is away. It owes them: they go back as soon as Redis answers again, and before the web admits
// anything else, not at the reconciler's pace (src/web/issue-intake.ts, OwedReleases).
// The web's intake runs in-process over real Redis and Postgres; its producer connection is cut
// exactly after the admission script ran, then healed; a worker of this file issues the coupons.
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'bullmq';
import type { Command, Redis } from 'ioredis';
import { config } from '../src/core/config';
import type { AppError } from '../src/core/errors';
import { logger } from '../src/core/logger';
import { closeSequelize, sequelize } from '../src/core/postgres';
import { createRedis, waitForReady } from '../src/core/redis';
import { createIssueIntake, type IntakeAnswer } from '../src/web/issue-intake';
import { createOutcomeHub, type OutcomeHub } from '../src/web/outcome-hub';
import { initModels } from '../src/storage';
import { CouponPolicy, policyRowFromCreate } from '../src/storage/policy';
import { policyCreateSchema } from '../src/domain/policy-rules';
import { createQueues, type Queues } from '../src/queues/connection';
import { issueIdempotencyRecordKey, parseRequestId } from '../src/queues/names';
import { readOutcome, type StoredOutcome } from '../src/queues/outcomes';
import { admissionSnapshot, openStock, writePolicyMeta } from '../src/storage/admission/admission';
import { redisKeys } from '../src/core/redis-keys';
import { createLocks } from '../src/core/lock';
import { createIssueProcessor } from '../src/worker/issue-queue';
import { createRejectionCounter } from '../src/observability/rejection-stats';
import { eventually } from './support/checkout';
import { closeDb, couponsOf } from './support/db';
import { policyBody, uniqueId } from './support/fixtures';

/** The reconciler gives a stranded slot back after 30-40 s; an owed one must be back well before. */
const PROMPTLY_MS = 3_000;
const WAIT_MS = 15_000;

// Queues and admission state of their own, so no other worker or reconciler touches them.
const sharedPrefix = process.env.QUEUE_PREFIX;
const prefix = uniqueId('owed');
let log: ReturnType<typeof logger>;
let queues: Queues;
let hub: OutcomeHub;
let redis: Redis;
let workerConnection: Redis;
let worker: Worker;
let link: ReturnType<typeof cuttableAfterAdmission>;
let intake: ReturnType<typeof createIssueIntake>;

/** admit.lua as the connection sends it: by its SHA1 (EVALSHA), or whole after a NOSCRIPT (EVAL). */
const admitLua = readFileSync(join(__dirname, '../src/storage/admission/lua/admit.lua'), 'utf8');
const admitSha = createHash('sha1').update(admitLua).digest('hex');
const isAdmission = (command: Command) =>
  (command.name === 'evalsha' && String(command.args[0]) === admitSha) || (command.name === 'eval' && String(command.args[0]) === admitLua);

/** BullMQ's add of an issue job: the only script on the producer connection with the queue's wait and marker keys. */
const isIssueAdd = (command: Command) =>
  ['evalsha', 'eval'].includes(command.name) &&
  command.args.some((a) => String(a) === `${prefix}:issue:wait`) &&
  command.args.some((a) => String(a) === `${prefix}:issue:marker`);

/**
 * Makes the producer connection lose Redis right after a turn's admission ran: once armed, the
 * next admit.lua call reaches Redis and its reply is delivered, then every command fails at once,
 * as ioredis fails them on a closed connection, until the link is healed (Redis answers again).
 * Nothing is sent to Redis while it is cut.
 */
function cuttableAfterAdmission(connection: Redis) {
  let state: 'open' | 'armed' | 'armed-lose' | 'cut' = 'open';
  let loseAddReply = false;
  const send = connection.sendCommand.bind(connection);
  connection.sendCommand = ((command: Command, stream?: unknown) => {
    if (state === 'cut') {
      command.reject(new Error('Connection is closed.'));
      return command.promise;
    }
    if (loseAddReply && isIssueAdd(command)) {
      // Redis runs the add; its reply is lost, as when the connection drops with the add in flight.
      loseAddReply = false;
      const lost = command.reject.bind(command);
      command.resolve = () =>
        lost(new Error('Reached the max retries per request limit (which is 0). Refer to "maxRetriesPerRequest" option for details.'));
    }
    if (state === 'armed-lose' && isAdmission(command)) {
      // The admission runs in Redis; its reply is lost with the link, which stays cut.
      const lost = command.reject.bind(command);
      command.resolve = () => {
        state = 'cut';
        lost(new Error('Reached the max retries per request limit (which is 0). Refer to "maxRetriesPerRequest" option for details.'));
      };
    }
    // Set before the reply reaches the web's turn: ioredis hands a pipeline's replies on in a later tick.
    if (state === 'armed' && isAdmission(command))
      command.promise.then(
        () => void (state = 'cut'),
        () => undefined,
      );
    return send(command, stream as never);
  }) as Redis['sendCommand'];
  return {
    loseReplyOfNextAdd: () => void (loseAddReply = true),
    armAfterAdmission: () => void (state = 'armed'),
    loseAdmissionReply: () => void (state = 'armed-lose'),
    heal: () => void (state = 'open'),
    isCut: () => state === 'cut',
  };
}

beforeAll(async () => {
  process.env.QUEUE_PREFIX = prefix;
  expect(config().QUEUE_PREFIX).toBe(prefix);
  log = logger();
  initModels(sequelize());
  redis = createRedis('client');
  queues = createQueues();
  await waitForReady(queues.connection);
  // BullMQ's own first commands (its Redis version check) are done before any cut.
  await queues.get('issue').waitUntilReady();
  link = cuttableAfterAdmission(queues.connection);
  hub = createOutcomeHub(log);
  await hub.ready;
  intake = createIssueIntake({ queues, hub, rejections: createRejectionCounter(redis, log), log });
  workerConnection = createRedis('worker');
  worker = new Worker('issue', createIssueProcessor({ db: sequelize(), redis, locks: createLocks(redis) }, log), {
    connection: workerConnection,
    prefix,
    concurrency: 8,
  });
});

afterAll(async () => {
  link?.heal();
  await worker?.close();
  workerConnection?.disconnect();
  await hub?.close();
  await queues?.get('issue').obliterate({ force: true });
  await queues?.close();
  redis?.disconnect();
  await closeSequelize();
  await closeDb();
  process.env.QUEUE_PREFIX = sharedPrefix;
});

async function newPolicy(totalQuantity: number): Promise<string> {
  const policy = await CouponPolicy.create(
    policyRowFromCreate(randomUUID(), policyCreateSchema.parse(policyBody({ totalQuantity, perUserLimit: 1 }))),
  );
  await writePolicyMeta(redis, policy);
  await openStock(redis, policy.id);
  return policy.id;
}

const ask = (policyId: string, userId: string, waitMs = WAIT_MS) =>
  intake({ policyId, userId, actorId: userId, traceId: uniqueId('t'), requestedAt: new Date().toISOString(), waitMs });

/** The request's final outcome: decided by the web, or published by the worker while the request waited. */
async function finalOf(answer: IntakeAnswer): Promise<StoredOutcome | null> {
  return answer.decided ?? (await answer.outcome) ?? null;
}

/** What the admission state holds for a policy and one of its users (read past the cut link). */
async function stateOf(policyId: string, userId: string) {
  const k = redisKeys().admission(policyId);
  const [snapshot, free, admitted] = await Promise.all([
    admissionSnapshot(redis, policyId),
    redis.lrange(k.free, 0, -1),
    redis.hget(k.users, userId),
  ]);
  return { ...snapshot, free, admitted: Number(admitted ?? 0) };
}

/** What a request that must fail was answered with: its error (null had it not failed). */
const failureOf = (answer: Promise<IntakeAnswer>): Promise<unknown> =>
  answer.then(
    () => null,
    (error: unknown) => error,
  );

/** The request admitted by a turn that is then cut off from Redis: answered 503, its slot left held. */
async function admitThenLoseRedis(policyId: string, userId: string): Promise<void> {
  link.armAfterAdmission();
  const failed = await failureOf(ask(policyId, userId));
  expect(link.isCut()).toBe(true);
  expect(failed).toMatchObject({ name: 'AppError', code: 'UNAVAILABLE', status: 503 } satisfies Partial<AppError>);
}

describe('slots of a turn that lost Redis after admitting', () => {
  it('go back as soon as Redis answers again, without waiting for a request or the reconciler; the shopper is admitted again and no unit is lost', async () => {
    const policyId = await newPolicy(3);
    const shopper = uniqueId('cut');
    await admitThenLoseRedis(policyId, shopper);

    // The fault hit work in flight: the admission is held, and stays held while Redis is away
    // (the web's retries every 250 ms cannot reach it).
    const held = { next: 2, issued: 1, freeSlots: 0, pending: 1, free: [], admitted: 1 };
    expect(await stateOf(policyId, shopper)).toEqual(held);
    await new Promise((r) => setTimeout(r, 700));
    expect(await stateOf(policyId, shopper)).toEqual(held);

    // Redis answers again: with no request arriving, the slot is back within moments.
    link.heal();
    const back = { next: 2, issued: 0, freeSlots: 1, pending: 0, free: ['1'], admitted: 0 };
    await eventually(
      () => stateOf(policyId, shopper),
      (s) => JSON.stringify(s) === JSON.stringify(back),
      PROMPTLY_MS,
      'the owed slot given back',
    );

    // The shopper told 503 retries and is admitted (not USER_LIMIT_REACHED), taking the slot back.
    const retried = await ask(policyId, shopper);
    expect(retried.decided).toBeUndefined();
    expect(await finalOf(retried)).toMatchObject({ s: 'succeeded', u: shopper });

    // The rest of the stock sells to others to the last unit: none stayed held by the lost turn.
    const others = Array.from({ length: 6 }, (_, i) => uniqueId(`other${i}`));
    const outcomes = await Promise.all(others.map(async (user) => finalOf(await ask(policyId, user))));
    expect(outcomes.filter((o) => o?.s === 'succeeded')).toHaveLength(2);
    expect(outcomes.filter((o) => o?.s === 'rejected').map((o) => o?.e?.code)).toEqual(['SOLD_OUT', 'SOLD_OUT', 'SOLD_OUT', 'SOLD_OUT']);
    const rows = await couponsOf(policyId);
    expect(rows.map((r) => Number(r.slot))).toEqual([1, 2, 3]);
    expect(new Set(rows.map((r) => r.user_id)).size).toBe(3);
    expect(rows.find((r) => r.user_id === shopper)?.slot).toBe(1);
    expect(await admissionSnapshot(redis, policyId)).toEqual({ next: 4, issued: 3, freeSlots: 0, pending: 0 });
  });

  it('go back before the web admits a new request: the only unit, owed, goes to the next shopper rather than a wait or SOLD_OUT', async () => {
    const policyId = await newPolicy(1);
    const first = uniqueId('cut');
    await admitThenLoseRedis(policyId, first);
    expect(await stateOf(policyId, first)).toMatchObject({ issued: 1, pending: 1, admitted: 1 });

    // Redis answers again and, in the same moment, a new shopper asks, while the slot is still owed.
    link.heal();
    const next = uniqueId('next');
    const answer = await ask(policyId, next);

    // Its turn gave the owed slot back first, so the web admitted it (it holds the unit in its job).
    expect(answer.decided).toBeUndefined();
    const job = await queues.get('issue').getJob(parseRequestId(answer.requestId).jobId);
    expect(job?.data.requests).toEqual([expect.objectContaining({ userId: next, admittedAs: { total: 1, admitted: 1 } })]);
    expect(await finalOf(answer)).toMatchObject({ s: 'succeeded', u: next });
    expect((await couponsOf(policyId)).map((r) => [r.user_id, Number(r.slot)])).toEqual([[next, 1]]);

    // The first shopper's retry finds the stock gone, not its own limit reached.
    expect(await finalOf(await ask(policyId, first))).toMatchObject({ s: 'rejected', e: { code: 'SOLD_OUT' } });
    expect(await stateOf(policyId, first)).toEqual({ next: 2, issued: 1, freeSlots: 0, pending: 0, free: [], admitted: 0 });
  });

  it("answer a retry under the same Idempotency-Key from the turn's job when its add ran but the reply was lost, not as a new request", async () => {
    const policyId = await newPolicy(3);
    const shopper = uniqueId('lost-reply');
    const key = randomUUID();
    const askKeyed = () =>
      intake({
        policyId,
        userId: shopper,
        actorId: shopper,
        traceId: uniqueId('t'),
        requestedAt: new Date().toISOString(),
        waitMs: WAIT_MS,
        idempotency: { redisKey: issueIdempotencyRecordKey(shopper, key), fingerprint: `issue-${policyId}` },
      });

    link.loseReplyOfNextAdd();
    const failed = await failureOf(askKeyed());
    expect(failed).toMatchObject({ name: 'AppError', code: 'UNAVAILABLE', status: 503 } satisfies Partial<AppError>);
    // The fault hit a queued request: the add ran, and the worker issued the shopper's coupon.
    const [coupon] = await eventually(
      () => couponsOf(policyId),
      (rows) => rows.length === 1,
      WAIT_MS,
      "the 503'd request's coupon",
    );
    expect(coupon).toMatchObject({ user_id: shopper, slot: 1 });

    // The shopper retries as told, under the same key: the answer is that request, with its coupon,
    // not a new request refused USER_LIMIT_REACHED.
    const retried = await askKeyed();
    expect(retried).toMatchObject({ requestId: coupon!.request_id, replay: true });
    expect(await readOutcome(queues.connection, retried.requestId)).toMatchObject({ s: 'succeeded', u: shopper, r: { id: coupon!.id } });
    // Nothing was given back or admitted twice.
    expect(await stateOf(policyId, shopper)).toMatchObject({ issued: 1, pending: 0, admitted: 1 });
    expect(await couponsOf(policyId)).toHaveLength(1);
  });

  it('go back too when the admission ran but its answer was lost with the link: the web gives back what it may have admitted', async () => {
    const policyId = await newPolicy(2);
    const shopper = uniqueId('lost-admit');
    link.loseAdmissionReply();
    const failed = await failureOf(ask(policyId, shopper));
    expect(link.isCut()).toBe(true);
    expect(failed).toMatchObject({ name: 'AppError', code: 'UNAVAILABLE', status: 503 } satisfies Partial<AppError>);
    // The fault hit: Redis admitted the shopper, though the web never heard it.
    expect(await stateOf(policyId, shopper)).toMatchObject({ issued: 1, pending: 1, admitted: 1 });

    link.heal();
    await eventually(
      () => stateOf(policyId, shopper),
      (st) => st.pending === 0 && st.admitted === 0 && st.issued === 0,
      PROMPTLY_MS,
      'the unknown admission given back',
    );
    // The shopper's retry is admitted and wins, not USER_LIMIT_REACHED.
    expect(await finalOf(await ask(policyId, shopper))).toMatchObject({ s: 'succeeded', u: shopper });
    expect((await couponsOf(policyId)).map((r) => r.user_id)).toEqual([shopper]);
  });
});
