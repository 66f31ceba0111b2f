// The issue methods beyond first-come and download, against the real processes, Postgres, Redis and
// Kafka: single-use codes, shared codes, wrong-code limits, user events and direct grants, each
// held to I1 (quantity), I2 (per-user limit), I5 (an event takes effect once) and I7 (every job ends).
import { createHmac } from 'node:crypto';
import { Queue, QueueEvents } from 'bullmq';
import IORedis from 'ioredis';
import { Kafka, logLevel } from 'kafkajs';
import { closeSequelize, sequelize } from '../src/core/postgres';
import { CODE_ALPHABET } from '../src/domain/codes';
import { dropUnfetchedCodes } from '../src/storage/codes';
import { derivedJobId } from '../src/queues/names';
import { directIssueResultSchema, userEventReturnSchema } from '../src/queues/results';
import { eventually, EventProducer } from './support/checkout';
import { closeDb, db } from './support/db';
import { createPolicy as createPolicyVia, uniqueId } from './support/fixtures';
import { Api, mapLimit } from './support/http';
import { startStack, type Stack } from './support/stack';
import { adminToken, tokenFor } from './support/tokens';

const WRONG_CODES_PER_USER = 5;

let stack: Stack;
let api: Api;
let admin: string;
const events = new EventProducer();

beforeAll(async () => {
  stack = await startStack({
    workers: 2,
    bridge: true,
    name: 'issuance-methods',
    env: { CODE_FAILURES_PER_USER: String(WRONG_CODES_PER_USER), CODE_FAILURES_PER_IP: '100000' },
  });
  api = new Api(stack.baseUrl, 256);
  admin = await adminToken();
});

afterAll(async () => {
  await events.close();
  await api?.close();
  await stack?.stop();
  await closeSequelize();
  await closeDb();
});

const createPolicy = (overrides: Record<string, unknown>) => createPolicyVia(api, overrides);

async function tokensOf(users: string[]) {
  return new Map(await Promise.all(users.map(async (u) => [u, await tokenFor(u)] as const)));
}

/** Each (user, body) is posted at once, then every job is waited for. */
async function redeemAll(requests: { user: string; body: Record<string, unknown> }[]) {
  const tokens = await tokensOf([...new Set(requests.map((r) => r.user))]);
  const accepted = await Promise.all(
    requests.map(async (r) => ({ ...r, reply: await api.post('/api/v1/coupons/issue', tokens.get(r.user), r.body) })),
  );
  for (const a of accepted) expect(a.reply.status).toBe(202);
  return mapLimit(accepted, 128, async (a) => ({ ...a, job: await api.settle(a.reply.body.jobId, tokens.get(a.user) as string) }));
}

async function couponRows(policyId: string) {
  const { rows } = await db().query<{ id: string; user_id: string; code_hash: string | null; request_id: string }>(
    'SELECT id, user_id, code_hash, request_id FROM coupons WHERE policy_id = $1',
    [policyId],
  );
  return rows;
}

const countOf = async (policyId: string) => (await couponRows(policyId)).length;
const hmac = (code: string) =>
  createHmac('sha256', process.env.CODE_HMAC_SECRET as string)
    .update(code.toUpperCase())
    .digest('hex');

async function generate(policyId: string, body: Record<string, unknown>) {
  const reply = await api.post(`/api/v1/coupons/policies/${policyId}/codes`, admin, body);
  expect(reply.status).toBe(202);
  return reply.body.jobId as string;
}

/** Every value of every Redis key of a stack (strings, hashes, lists, sets, sorted sets, streams), as one text. */
async function redisText(prefix: string): Promise<string> {
  const redis = new IORedis(process.env.REDIS_URL as string);
  try {
    const keys = await redis.keys(`${prefix}*`);
    const values = await Promise.all(
      keys.map(async (key) => {
        switch (await redis.type(key)) {
          case 'string':
            return redis.get(key);
          case 'hash':
            return JSON.stringify(await redis.hgetall(key));
          case 'list':
            return JSON.stringify(await redis.lrange(key, 0, -1));
          case 'set':
            return JSON.stringify(await redis.smembers(key));
          case 'zset':
            return JSON.stringify(await redis.zrange(key, 0, -1));
          case 'stream':
            return JSON.stringify(await redis.xrange(key, '-', '+'));
          default:
            return '';
        }
      }),
    );
    return values.join('\n');
  } finally {
    redis.disconnect();
  }
}

describe('single-use codes', () => {
  let policyId: string;
  let codes: string[];
  let generationJob: string;

  beforeAll(async () => {
    policyId = await createPolicy({ issueMethod: 'CODE', totalQuantity: 1000 });
    generationJob = await generate(policyId, { count: 1000, prefix: 'sale-' });
    const job = await api.settle(generationJob, admin);
    expect(job.status).toBe('succeeded');
    codes = job.result.codes;
  });

  it('generates unique codes from an alphabet without look-alikes, stores only keyed hashes, and lists them once', async () => {
    expect(codes).toHaveLength(1000);
    expect(new Set(codes).size).toBe(1000);
    const symbols = new RegExp(`^SALE-[${CODE_ALPHABET}]{12}$`);
    for (const code of codes) expect(code).toMatch(symbols);
    expect(codes.map((c) => c.slice('SALE-'.length)).join('')).not.toMatch(/[01OIL]/);

    const { rows } = await db().query<{ code_hash: string }>('SELECT code_hash FROM coupon_codes WHERE policy_id = $1', [policyId]);
    expect(rows).toHaveLength(1000);
    const stored = new Set(rows.map((r) => r.code_hash));
    for (const code of codes) {
      expect(stored.has(code)).toBe(false);
      expect(stored.has(hmac(code))).toBe(true);
    }

    // The first read handed the codes out; the job still answers, without them.
    const again = await api.get(`/api/v1/jobs/${generationJob}`, admin);
    expect(again.body.status).toBe('succeeded');
    expect(again.body.result.codes).toBeUndefined();
  });

  it('uses each of 1,000 codes once when two users redeem every code at the same instant', async () => {
    const requests = codes.flatMap((code, i) => [
      { user: uniqueId(`a${i}`), body: { code } },
      // Codes match case-insensitively.
      { user: uniqueId(`b${i}`), body: { code: code.toLowerCase() } },
    ]);
    const results = await redeemAll(requests);

    expect(results.filter((r) => r.job.status === 'pending' || r.job.status === 'failed')).toEqual([]);
    const winners = results.filter((r) => r.job.status === 'succeeded');
    expect(winners).toHaveLength(1000);
    for (const loser of results.filter((r) => r.job.status === 'rejected')) expect(loser.job.reason.code).toBe('CODE_ALREADY_USED');
    // One winner per code.
    expect(new Set(winners.map((w) => String(w.body.code).toUpperCase())).size).toBe(1000);

    const rows = await couponRows(policyId);
    expect(rows).toHaveLength(1000);
    expect(new Set(rows.map((r) => r.code_hash)).size).toBe(1000);
    expect(new Set(rows.map((r) => r.code_hash))).toEqual(new Set(codes.map(hmac)));
    expect(new Set(rows.map((r) => r.user_id)).size).toBe(1000);

    // A used code stays used.
    const again = await redeemAll([{ user: uniqueId('late'), body: { code: codes[0] } }]);
    expect(again[0]?.job.reason?.code).toBe('CODE_ALREADY_USED');
  });

  it('does not take a stored hash for a code', async () => {
    const { rows } = await db().query<{ code_hash: string }>('SELECT code_hash FROM coupon_codes WHERE policy_id = $1 LIMIT 1', [policyId]);
    const results = await redeemAll([{ user: uniqueId('thief'), body: { code: rows[0]?.code_hash } }]);
    expect(results[0]?.job.status).toBe('rejected');
    expect(results[0]?.job.reason.code).toBe('CODE_NOT_FOUND');
  });
});

describe('code generation jobs', () => {
  it('reports progress while it runs and hands the codes out only once', async () => {
    const policyId = await createPolicy({ issueMethod: 'CODE', totalQuantity: null });
    const connection = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
    const queueEvents = new QueueEvents('issue', { connection, prefix: stack.queuePrefix });
    const progress: { done: number; total: number }[] = [];
    try {
      await queueEvents.waitUntilReady();
      let jobId = '';
      queueEvents.on('progress', ({ jobId: id, data }) => {
        if (id === jobId) progress.push(data as { done: number; total: number });
      });
      jobId = await generate(policyId, { count: 20_000, length: 8 });
      const first = await api.settle(jobId, admin, 120_000);
      expect(first.status).toBe('succeeded');
      expect(first.result.codes).toHaveLength(20_000);
      expect(first.result.count).toBe(20_000);
      for (const code of first.result.codes as string[]) expect(code).toHaveLength(8);

      const second = await api.get(`/api/v1/jobs/${jobId}`, admin);
      expect(second.status).toBe(200);
      expect(second.body.status).toBe('succeeded');
      expect(second.body.result.codes).toBeUndefined();
      expect(second.body.result.codesDelivered).toBe(true);

      await eventually(
        async () => progress.length,
        (n) => n >= 3,
        10_000,
        'progress events',
      );
      expect(progress[progress.length - 1]).toEqual({ done: 20_000, total: 20_000 });
      const dones = progress.map((p) => p.done);
      expect([...dones].sort((x, y) => x - y)).toEqual(dones);

      // What Bull Board shows for the job: its progress, and no code.
      const queue = new Queue('issue', { connection, prefix: stack.queuePrefix });
      const job = await queue.getJob(jobId);
      expect(job?.progress).toEqual({ done: 20_000, total: 20_000 });
      expect(JSON.stringify(job?.returnvalue)).not.toContain(first.result.codes[0]);
      await queue.close();
    } finally {
      await queueEvents.close();
      connection.disconnect();
    }
  });

  it('never replaces codes already handed out when a finished generation job runs again', async () => {
    const policyId = await createPolicy({ issueMethod: 'CODE', totalQuantity: null });
    const reply = await api.call('POST', `/api/v1/coupons/policies/${policyId}/codes`, {
      token: admin,
      body: { count: 50 },
      headers: { prefer: 'wait=10' },
    });
    expect(reply.status).toBe(200);
    const codes = reply.body.result.codes as string[];
    expect(codes).toHaveLength(50);
    const hashes = async () =>
      (await db().query<{ code_hash: string }>('SELECT code_hash FROM coupon_codes WHERE policy_id = $1', [policyId])).rows
        .map((r) => r.code_hash)
        .sort();
    const before = await hashes();

    // Retried by hand (Bull Board hides the button for finished jobs; the API call does it anyway).
    const connection = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
    const queue = new Queue('issue', { connection, prefix: stack.queuePrefix });
    try {
      const job = await queue.getJob(reply.body.jobId);
      const firstFinish = job?.finishedOn;
      await job?.retry('completed');
      const rerun = await eventually(
        () => queue.getJob(reply.body.jobId),
        (j) => Boolean(j?.finishedOn && j.finishedOn !== firstFinish),
        30_000,
        'the rerun',
      );
      expect(rerun?.returnvalue).toMatchObject({ outcome: 'succeeded', result: { count: 50 } });
    } finally {
      await queue.close();
      connection.disconnect();
    }
    expect(await hashes()).toEqual(before);
    const view = await api.get(`/api/v1/jobs/${reply.body.jobId}`, admin);
    expect(view.body.result.codes).toBeUndefined();
    const redeemed = await redeemAll([{ user: uniqueId('keeper'), body: { code: codes[0] } }]);
    expect(redeemed[0]?.job.status).toBe('succeeded');
  });

  it('keeps the codes of a finished batch in Postgres, sealed, until their owner takes them, once, whatever Redis loses', async () => {
    const policyId = await createPolicy({ issueMethod: 'CODE', totalQuantity: null });
    const jobId = await generate(policyId, { count: 40 });
    // Another admin waits for the job to finish: its reads list no codes and take none.
    const otherAdmin = await tokenFor('admin-2', 'admin');
    const seenByOther = await api.settle(jobId, otherAdmin);
    expect(seenByOther.status).toBe('succeeded');
    expect(seenByOther.result.codes).toBeUndefined();
    expect(seenByOther.result.codesDelivered).toBeUndefined();

    // The codes are in Postgres, sealed: the stored bytes hold none of them in the clear, and no
    // Redis key of the stack holds them (a Redis restarted empty would lose nothing of them).
    const sealedRow = async () =>
      (
        await db().query<{ sealed_codes: Buffer | null; delivered_at: Date | null }>(
          'SELECT sealed_codes, delivered_at FROM code_batches WHERE batch_id = $1',
          [jobId],
        )
      ).rows[0];
    const before = await sealedRow();
    expect(before?.sealed_codes?.length).toBeGreaterThan(40 * 12);
    expect(before?.delivered_at).toBeNull();

    // Two reads by the owner at once: exactly one lists the codes, the other says they were delivered.
    const [a, b] = await Promise.all([api.get(`/api/v1/jobs/${jobId}`, admin), api.get(`/api/v1/jobs/${jobId}`, admin)]);
    const withCodes = [a, b].filter((r) => Array.isArray(r.body.result.codes));
    expect(withCodes).toHaveLength(1);
    expect([a, b].filter((r) => r.body.result.codesDelivered === true)).toHaveLength(1);
    const codes = withCodes[0]?.body.result.codes as string[];
    expect(codes).toHaveLength(40);
    const inRedis = await redisText(stack.queuePrefix);
    // The scan reaches the batch's own job (where a result would hold codes), and finds none of them.
    expect(inRedis).toContain(jobId);
    expect(codes.filter((code) => inRedis.includes(code))).toEqual([]);
    for (const code of codes) expect(before?.sealed_codes?.includes(Buffer.from(code))).toBe(false);
    // They are the batch's codes: their keyed hashes are the ones stored.
    const stored = (await db().query<{ code_hash: string }>('SELECT code_hash FROM coupon_codes WHERE batch_id = $1', [jobId])).rows
      .map((r) => r.code_hash)
      .sort();
    expect(
      codes
        .map((code) =>
          createHmac('sha256', process.env.CODE_HMAC_SECRET as string)
            .update(code)
            .digest('hex'),
        )
        .sort(),
    ).toEqual(stored);

    // Taken out: Postgres keeps only when.
    const after = await sealedRow();
    expect(after?.sealed_codes).toBeNull();
    expect(after?.delivered_at).toBeInstanceOf(Date);
    expect((await api.get(`/api/v1/jobs/${jobId}`, admin)).body.result).toMatchObject({ count: 40, codesDelivered: true });
  });

  it('drops the codes nobody fetched within a day, and says so', async () => {
    const policyId = await createPolicy({ issueMethod: 'CODE', totalQuantity: null });
    const jobId = await generate(policyId, { count: 5 });
    const otherAdmin = await tokenFor('admin-2', 'admin');
    expect((await api.settle(jobId, otherAdmin)).status).toBe('succeeded');
    await db().query("UPDATE code_batches SET finished_at = now() - interval '25 hours' WHERE batch_id = $1", [jobId]);

    // Past their day the owner's read gets none, though they are still stored...
    const late = await api.get(`/api/v1/jobs/${jobId}`, admin);
    expect(late.body.result.codes).toBeUndefined();
    expect(late.body.result.codesExpired).toBe(true);
    // ...until the worker's drop (once a minute; called here directly) removes them for good.
    const { rows } = await db().query<{ sealed: boolean }>(
      'SELECT sealed_codes IS NOT NULL AS sealed FROM code_batches WHERE batch_id = $1',
      [jobId],
    );
    expect(rows[0]?.sealed).toBe(true);
    // Every worker drops such codes once a minute too, so this call or one of theirs may be the one.
    await dropUnfetchedCodes(sequelize());
    const { rows: after } = await db().query<{ sealed: boolean }>(
      'SELECT sealed_codes IS NOT NULL AS sealed FROM code_batches WHERE batch_id = $1',
      [jobId],
    );
    expect(after[0]?.sealed).toBe(false);
  });

  it('refuses codes for a policy that is not a CODE policy or has a shared code', async () => {
    const download = await createPolicy({ issueMethod: 'DOWNLOAD', totalQuantity: null });
    expect((await api.post(`/api/v1/coupons/policies/${download}/codes`, admin, { count: 10 })).status).toBe(409);
    const shared = await createPolicy({ issueMethod: 'CODE', totalQuantity: null, code: `S${uniqueId('x').slice(2, 10)}` });
    expect((await api.post(`/api/v1/coupons/policies/${shared}/codes`, admin, { count: 10 })).status).toBe(409);
    expect((await api.post('/api/v1/coupons/policies/no-such-policy/codes', admin, { count: 10 })).status).toBe(404);
    for (const bad of [
      { count: 0 },
      { count: 100_001 },
      { count: 10, length: 7 },
      { count: 10, prefix: 'no spaces' },
      { count: 10, extra: 1 },
    ]) {
      expect((await api.post(`/api/v1/coupons/policies/${download}/codes`, admin, bad)).status).toBe(400);
    }
    expect((await api.post(`/api/v1/coupons/policies/${download}/codes`, await tokenFor('someone'), { count: 10 })).status).toBe(403);
  });
});

describe('shared codes', () => {
  it('issues exactly totalQuantity 300 when 500 users redeem one code twice each, one per user', async () => {
    const code = `WELCOME${uniqueId('x').slice(2, 10).toUpperCase()}`;
    const policyId = await createPolicy({ issueMethod: 'CODE', totalQuantity: 300, perUserLimit: 1, code });
    const users = Array.from({ length: 500 }, (_, i) => uniqueId(`sh${i}`));
    const results = await redeemAll(
      users.flatMap((user) => [
        { user, body: { code } },
        { user, body: { code: code.toLowerCase() } },
      ]),
    );

    expect(results.filter((r) => r.job.status === 'pending' || r.job.status === 'failed')).toEqual([]);
    expect(results.filter((r) => r.job.status === 'succeeded')).toHaveLength(300);
    for (const r of results.filter((x) => x.job.status === 'rejected'))
      expect(['SOLD_OUT', 'USER_LIMIT_REACHED']).toContain(r.job.reason.code);
    const rows = await couponRows(policyId);
    expect(rows).toHaveLength(300);
    expect(new Set(rows.map((r) => r.user_id)).size).toBe(300);
  });

  it('does not issue a CODE policy by its id', async () => {
    const policyId = await createPolicy({ issueMethod: 'CODE', totalQuantity: 10, code: `ID${uniqueId('x').slice(2, 10).toUpperCase()}` });
    const results = await redeemAll([{ user: uniqueId('byid'), body: { policyId } }]);
    expect(results[0]?.job.reason.code).toBe('METHOD_NOT_SUPPORTED');
  });
});

describe('wrong codes', () => {
  it(`answers 429 with Retry-After once a user has tried ${WRONG_CODES_PER_USER} wrong codes`, async () => {
    const user = uniqueId('guesser');
    const token = await tokenFor(user);
    for (let i = 0; i < WRONG_CODES_PER_USER; i += 1) {
      const reply = await api.post('/api/v1/coupons/issue', token, { code: `NOPE${i}XYZ` });
      expect(reply.status).toBe(202);
      expect((await api.settle(reply.body.jobId, token)).reason.code).toBe('CODE_NOT_FOUND');
    }
    const blocked = await api.post('/api/v1/coupons/issue', token, { code: 'NOPE-AGAIN' });
    expect(blocked.status).toBe(429);
    expect(blocked.body.error.code).toBe('RATE_LIMITED');
    expect(Number(blocked.headers['retry-after'])).toBeGreaterThanOrEqual(1);

    // Another user is not held back by this one's guesses.
    const other = await tokenFor(uniqueId('honest'));
    expect((await api.post('/api/v1/coupons/issue', other, { code: 'NOPE-OTHER' })).status).toBe(202);
  });
});

describe('user events', () => {
  it('issues once per event and policy: 200 events delivered twice, two policies of the trigger, 400 coupons', async () => {
    const trigger = `SIGNED_UP_${uniqueId('x').slice(2, 10).toUpperCase()}`;
    const first = await createPolicy({ issueMethod: 'EVENT', triggerEvent: trigger, totalQuantity: null, perUserLimit: 5 });
    const second = await createPolicy({ issueMethod: 'EVENT', triggerEvent: trigger, totalQuantity: null, perUserLimit: 5 });
    const other = await createPolicy({ issueMethod: 'EVENT', triggerEvent: `${trigger}_OTHER`, totalQuantity: null, perUserLimit: 5 });
    // 100 users with two events each: the per-user limit (5) would allow a duplicate through.
    const users = Array.from({ length: 100 }, (_, i) => uniqueId(`ev${i}`));
    const list = users.flatMap((userId) =>
      [0, 1].map((k) => ({ eventId: uniqueId(`e${k}`), type: trigger, userId, occurredAt: new Date().toISOString() })),
    );
    const messages = list.map((e) => ({ key: e.userId, value: JSON.stringify(e) }));
    await events.send(stack.userEventsTopic, [...messages, ...messages]);

    await eventually(
      async () => (await countOf(first)) + (await countOf(second)),
      (n) => n >= 400,
      60_000,
      '400 coupons',
    );
    // Let any duplicate that would slip through land before counting.
    await settleUserEvents();
    for (const policyId of [first, second]) {
      const rows = await couponRows(policyId);
      expect(rows).toHaveLength(200);
      const perUser = new Map<string, number>();
      for (const r of rows) perUser.set(r.user_id, (perUser.get(r.user_id) ?? 0) + 1);
      expect([...perUser.values()]).toEqual(Array(100).fill(2));
    }
    expect(await countOf(other)).toBe(0);

    // Delivered again after its job is gone: the request id still finds the coupon.
    const replayed = list[0]!;
    const connection = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
    const queue = new Queue('issue', { connection, prefix: stack.queuePrefix });
    try {
      const jobId = derivedJobId('user-event', replayed.eventId);
      await (await queue.getJob(jobId))?.remove();
      await events.send(stack.userEventsTopic, [{ key: replayed.userId, value: JSON.stringify(replayed) }]);
      const rerun = await eventually(
        () => queue.getJob(jobId),
        (job) => Boolean(job?.finishedOn),
        30_000,
        'replayed event job',
      );
      const rerunResult = userEventReturnSchema.parse(rerun?.returnvalue);
      expect(rerunResult.outcome === 'succeeded' && rerunResult.result.policies.map((p) => p.outcome)).toEqual(['issued', 'issued']);
    } finally {
      await queue.close();
      connection.disconnect();
    }
    expect(await countOf(first)).toBe(200);
    expect(await countOf(second)).toBe(200);
  });

  it('stops issuing for a paused EVENT policy at once and resumes after', async () => {
    const trigger = `ORDERED_${uniqueId('x').slice(2, 10).toUpperCase()}`;
    const kept = await createPolicy({ issueMethod: 'EVENT', triggerEvent: trigger, totalQuantity: null, perUserLimit: 100 });
    const paused = await createPolicy({ issueMethod: 'EVENT', triggerEvent: trigger, totalQuantity: null, perUserLimit: 100 });
    const send = (n: number) =>
      events.send(
        stack.userEventsTopic,
        Array.from({ length: n }, () => {
          const e = { eventId: uniqueId('ev'), type: trigger, userId: uniqueId('u'), occurredAt: new Date().toISOString() };
          return { key: e.userId, value: JSON.stringify(e) };
        }),
      );
    await send(20);
    await eventually(
      async () => [await countOf(kept), await countOf(paused)],
      ([a, b]) => a === 20 && b === 20,
      30_000,
      'both issue',
    );

    expect((await api.patch(`/api/v1/coupons/policies/${paused}`, admin, { status: 'PAUSED' })).status).toBe(200);
    await send(20);
    await eventually(
      () => countOf(kept),
      (n) => n === 40,
      30_000,
      'the active policy issues',
    );
    // Each event's job serves both policies: once the queue is idle, every one of the 20 has finished.
    await settleQueue();
    expect(await countOf(paused)).toBe(20);

    expect((await api.patch(`/api/v1/coupons/policies/${paused}`, admin, { status: 'ACTIVE' })).status).toBe(200);
    await send(5);
    await eventually(
      async () => [await countOf(kept), await countOf(paused)],
      ([a, b]) => a === 45 && b === 25,
      30_000,
      'both issue again',
    );
  });

  it('sends malformed user events to the dead-letter topic and applies the valid event after each on the same partition', async () => {
    const trigger = `VISITED_${uniqueId('x').slice(2, 10).toUpperCase()}`;
    const policyId = await createPolicy({ issueMethod: 'EVENT', triggerEvent: trigger, totalQuantity: null });
    const valid = () => ({ eventId: uniqueId('ok'), type: trigger, userId: uniqueId('u'), occurredAt: new Date().toISOString() });
    const { userId: _dropped, ...noUser } = valid();
    const malformed: { name: string; value: string; reason: RegExp }[] = [
      { name: 'a lower-case type', value: JSON.stringify({ ...valid(), type: 'lower-case' }), reason: /^not a user event: type: / },
      { name: 'not JSON', value: '{"eventId": "cut off', reason: /^the value is not JSON$/ },
      { name: 'no userId', value: JSON.stringify(noUser), reason: /^not a user event: userId: / },
      {
        name: 'a shape of something else',
        value: JSON.stringify([{ orderId: 'o-1', amount: 100 }]),
        reason: /^not a user event: \(root\): /,
      },
    ];
    // Each malformed message is followed by a valid event, all on partition 0, in this order.
    const good = malformed.map(() => valid());
    const keyOf = (i: number) => `${policyId}-${i}`;
    await events.send(
      stack.userEventsTopic,
      malformed.flatMap((bad, i) => [
        { key: keyOf(i), value: bad.value, partition: 0 },
        { key: good[i]!.userId, value: JSON.stringify(good[i]), partition: 0 },
      ]),
    );

    await eventually(
      () => countOf(policyId),
      (n) => n === good.length,
      30_000,
      'every valid event applied',
    );
    expect(new Set((await couponRows(policyId)).map((r) => r.user_id))).toEqual(new Set(good.map((g) => g.userId)));

    // Other tests of this stack may dead-letter too: only this test's keys are looked at.
    const dead = (await events.readAll(`${stack.userEventsTopic}.dlq`, malformed.length)).filter((m) => m.key?.startsWith(`${policyId}-`));
    expect(dead.map((m) => m.key).sort()).toEqual(malformed.map((_, i) => keyOf(i)).sort());
    for (const [i, bad] of malformed.entries()) {
      const letter = dead.find((m) => m.key === keyOf(i));
      expect({ name: bad.name, value: letter?.value, reason: letter?.headers['dlq-reason'] }).toEqual({
        name: bad.name,
        value: bad.value,
        reason: expect.stringMatching(bad.reason),
      });
      expect(letter?.headers['dlq-source-partition']).toBe('0');
    }
  });
});

describe('direct grants', () => {
  it('grants a policy of 600 to 1,000 users: 600 issued, 400 SOLD_OUT, with progress', async () => {
    const policyId = await createPolicy({ issueMethod: 'DIRECT', totalQuantity: 600 });
    const userIds = Array.from({ length: 1000 }, (_, i) => uniqueId(`d${i}`));
    const reply = await api.post(`/api/v1/coupons/policies/${policyId}/direct-issue`, admin, { userIds });
    expect(reply.status).toBe(202);
    const job = await api.settle(reply.body.jobId, admin, 120_000);
    expect(job.status).toBe('succeeded');
    const grant = directIssueResultSchema.parse(job.result);
    expect(grant).toMatchObject({ requested: 1000, issued: 600, rejected: 400, failed: 0, rejectedBy: { SOLD_OUT: 400 } });
    expect(grant.results).toHaveLength(1000);
    expect(grant.results.map((r) => r.userId)).toEqual(userIds);

    const rows = await couponRows(policyId);
    expect(rows).toHaveLength(600);
    expect(new Set(rows.map((r) => r.user_id))).toEqual(new Set(grant.results.filter((r) => r.outcome === 'issued').map((r) => r.userId)));

    const connection = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
    const queue = new Queue('issue', { connection, prefix: stack.queuePrefix });
    expect((await queue.getJob(reply.body.jobId))?.progress).toEqual({ done: 1000, total: 1000 });
    await queue.close();
    connection.disconnect();
  });

  it('keeps the per-user limit and refuses bad grants', async () => {
    const policyId = await createPolicy({ issueMethod: 'DIRECT', totalQuantity: null, perUserLimit: 1 });
    const user = uniqueId('twice');
    const reply = await api.post(`/api/v1/coupons/policies/${policyId}/direct-issue`, admin, { userIds: [user, user] });
    const job = await api.settle(reply.body.jobId, admin);
    expect(
      directIssueResultSchema
        .parse(job.result)
        .results.map((r) => r.outcome)
        .sort(),
    ).toEqual(['issued', 'rejected']);
    expect(await countOf(policyId)).toBe(1);

    const tooMany = Array.from({ length: 1001 }, (_, i) => `u${i}`);
    expect((await api.post(`/api/v1/coupons/policies/${policyId}/direct-issue`, admin, { userIds: tooMany })).status).toBe(400);
    expect((await api.post(`/api/v1/coupons/policies/${policyId}/direct-issue`, admin, { userIds: [] })).status).toBe(400);
    expect((await api.post(`/api/v1/coupons/policies/${policyId}/direct-issue`, await tokenFor(user), { userIds: [user] })).status).toBe(
      403,
    );
    const download = await createPolicy({ issueMethod: 'DOWNLOAD', totalQuantity: null });
    expect((await api.post(`/api/v1/coupons/policies/${download}/direct-issue`, admin, { userIds: [user] })).status).toBe(409);
  });
});

/** Waits until the stack's issue queue has nothing waiting or running. */
async function settleQueue(): Promise<void> {
  const connection = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
  const queue = new Queue('issue', { connection, prefix: stack.queuePrefix });
  try {
    await eventually(
      () => queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized'),
      (c) => Object.values(c).every((n) => n === 0),
      30_000,
      'issue queue idle',
    );
  } finally {
    await queue.close();
    connection.disconnect();
  }
}

/**
 * Waits until the bridge has handed over every user event sent so far, then for the queue to be
 * idle: one marker event per partition of the topic, after everything else on it, each issuing a
 * coupon of a policy of its own. The bridge hands a partition's messages over in order, so once
 * every marker's coupon exists, every earlier message is a job, and once the queue is idle, each
 * of those jobs has finished.
 */
async function settleUserEvents(): Promise<void> {
  const kafka = new Kafka({
    clientId: 'coupon-tests-admin',
    brokers: (process.env.KAFKA_BROKERS ?? '127.0.0.1:9092').split(','),
    logLevel: logLevel.NOTHING,
  });
  const admin = kafka.admin();
  await admin.connect();
  let partitions: number[];
  try {
    const { topics } = await admin.fetchTopicMetadata({ topics: [stack.userEventsTopic] });
    partitions = (topics[0]?.partitions ?? []).map((p) => p.partitionId);
  } finally {
    await admin.disconnect();
  }
  expect(partitions.length).toBeGreaterThan(0);
  const trigger = `MARKER_${uniqueId('x').slice(2, 10).toUpperCase()}`;
  const marker = await createPolicy({ issueMethod: 'EVENT', triggerEvent: trigger, totalQuantity: null });
  await events.send(
    stack.userEventsTopic,
    partitions.map((partition) => {
      const e = { eventId: uniqueId('mark'), type: trigger, userId: uniqueId('marker'), occurredAt: new Date().toISOString() };
      return { key: e.userId, value: JSON.stringify(e), partition };
    }),
  );
  await eventually(
    () => countOf(marker),
    (n) => n === partitions.length,
    60_000,
    'every partition past its marker',
  );
  await settleQueue();
}
