// Claims on single-use codes against the real processes, Postgres and Redis: a redeem that fails for
// good lets go of its code, so the code is not CODE_ALREADY_USED to everyone for the claim's ten
// minutes, and a claim is never let go for a code that a coupon holds.
import { createHmac, randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { config } from '../src/core/config';
import { closeSequelize, sequelize } from '../src/core/postgres';
import { createRedis, waitForReady } from '../src/core/redis';
import { redisKeysUnder } from '../src/core/redis-keys';
import { initModels } from '../src/storage';
import { claimCode, releaseUnusedCode } from '../src/storage/code-claims';
import { closeDb, db } from './support/db';
import { createPolicy, uniqueId } from './support/fixtures';
import { Api } from './support/http';
import { logLinesWhen, startStack, type Stack } from './support/stack';
import { slowPostgres, type TcpProxy } from './support/tcp-proxy';
import { adminToken, tokenFor } from './support/tokens';

let stack: Stack;
let api: Api;
let admin: string;
let pgProxy: TcpProxy;
let redis: Redis;

// One prefix for the stack and this process: the claims this process makes are the workers' keys.
const sharedPrefix = process.env.QUEUE_PREFIX;
const prefix = uniqueId('claims');

beforeAll(async () => {
  process.env.QUEUE_PREFIX = prefix;
  expect(config().QUEUE_PREFIX).toBe(prefix);
  // The worker reaches Postgres through a proxy that can cut the connection carrying a coupon insert.
  const proxied = await slowPostgres(0);
  pgProxy = proxied.proxy;
  stack = await startStack({ workers: 0, name: 'code-claims', env: { QUEUE_PREFIX: prefix } });
  await stack.startWorker({ DATABASE_URL: proxied.databaseUrl });
  api = new Api(stack.baseUrl, 16);
  admin = await adminToken();
  initModels(sequelize());
  redis = createRedis('client');
  await waitForReady(redis);
});

afterAll(async () => {
  await api?.close();
  await stack?.stop();
  await pgProxy?.close();
  redis?.disconnect();
  await closeSequelize();
  await closeDb();
  process.env.QUEUE_PREFIX = sharedPrefix;
});

const hmac = (code: string) =>
  createHmac('sha256', process.env.CODE_HMAC_SECRET as string)
    .update(code.toUpperCase())
    .digest('hex');

/** A CODE policy of `totalQuantity` with `count` single-use codes. */
async function codePolicy(totalQuantity: number, count: number): Promise<{ policyId: string; codes: string[] }> {
  const policyId = await createPolicy(api, { issueMethod: 'CODE', totalQuantity });
  const reply = await api.call('POST', `/api/v1/coupons/policies/${policyId}/codes`, {
    token: admin,
    body: { count },
    headers: { prefer: 'wait=10' },
  });
  expect(reply.status).toBe(200);
  return { policyId, codes: reply.body.result.codes as string[] };
}

async function redeem(user: string, code: string) {
  const token = await tokenFor(user);
  const reply = await api.post('/api/v1/coupons/issue', token, { code });
  expect(reply.status).toBe(202);
  return api.settle(reply.body.jobId, token);
}

async function couponsWithCode(policyId: string) {
  const { rows } = await db().query<{ user_id: string; code_hash: string; slot: number }>(
    'SELECT user_id, code_hash, slot FROM coupons WHERE policy_id = $1',
    [policyId],
  );
  return rows;
}

describe('single-use code claims', () => {
  it('frees a code whose redeem failed on its last attempt, so its owner redeems it at once on retry', async () => {
    // One unit of stock: a slot not given back would turn the retry into SOLD_OUT.
    const { policyId, codes } = await codePolicy(1, 1);
    const code = codes[0] as string;
    const owner = uniqueId('owner');

    // Every coupon insert of every attempt loses its connection before Postgres sees it; the
    // lookups between attempts (on fresh connections) still answer.
    pgProxy.cutOn = (chunk) => chunk.includes('insert_issued_coupons');
    let failed;
    try {
      failed = await redeem(owner, code);
    } finally {
      pgProxy.cutOn = null;
    }
    expect(failed.status).toBe('failed');
    expect(await couponsWithCode(policyId)).toEqual([]);

    // The same user retrying is not told CODE_ALREADY_USED.
    const retried = await redeem(owner, code);
    expect(retried.status).toBe('succeeded');
    const rows = await couponsWithCode(policyId);
    expect(rows).toEqual([{ user_id: owner, code_hash: hmac(code), slot: 1 }]);

    // Now it is used, for everyone.
    const late = await redeem(uniqueId('late'), code);
    expect(late.reason?.code).toBe('CODE_ALREADY_USED');
    expect(await couponsWithCode(policyId)).toHaveLength(1);
  }, 30_000);

  it('answers succeeded for a redeem whose coupon was written but whose answer was lost, and keeps its code used', async () => {
    const { policyId, codes } = await codePolicy(2, 1);
    const code = codes[0] as string;
    const owner = uniqueId('owner');

    // The first coupon insert reaches Postgres and commits; its answer never reaches the worker.
    let cuts = 0;
    pgProxy.cutReplyOn = (chunk) => chunk.includes('insert_issued_coupons') && cuts++ === 0;
    let job;
    try {
      job = await redeem(owner, code);
    } finally {
      pgProxy.cutReplyOn = null;
    }
    expect(cuts).toBeGreaterThanOrEqual(1);
    expect(job.status).toBe('succeeded');
    // The answer came from the coupon the lost insert had written, found by the next attempt.
    const replayed = await logLinesWhen(
      'code-claims-worker-1',
      (l) => String(l.jobId).startsWith(job.id.split('.')[0] as string) && l.msg === 'coupon issued by an earlier run',
    );
    expect(replayed).toHaveLength(1);
    expect(await couponsWithCode(policyId)).toEqual([{ user_id: owner, code_hash: hmac(code), slot: 1 }]);

    // The claim was not let go: the code is used for everyone, and the stock unit it did not take is still there.
    const other = await redeem(uniqueId('other'), code);
    expect(other.reason?.code).toBe('CODE_ALREADY_USED');
    expect(await couponsWithCode(policyId)).toHaveLength(1);
  }, 30_000);

  it('keeps a claim when the request gives up on a code that a coupon already holds', async () => {
    const { codes } = await codePolicy(5, 2);
    const [used, unused] = codes as [string, string];
    expect((await redeem(uniqueId('holder'), used)).status).toBe('succeeded');

    // As if Redis had lost the used code's mark: another request claims it, then gives up.
    await redis.del(redisKeysUnder(prefix).codeClaim(hmac(used)));
    const giver = `iss_${randomUUID()}.0`;
    expect(await claimCode(redis, hmac(used), giver)).toBe(true);
    await releaseUnusedCode(sequelize(), redis, hmac(used), giver);
    // Postgres holds a coupon with the code: the claim stays, nobody else takes stock for it.
    expect(await claimCode(redis, hmac(used), `iss_${randomUUID()}.0`)).toBe(false);

    // An unused code is free again for the next request.
    const other = `iss_${randomUUID()}.0`;
    expect(await claimCode(redis, hmac(unused), other)).toBe(true);
    await releaseUnusedCode(sequelize(), redis, hmac(unused), other);
    expect(await claimCode(redis, hmac(unused), `iss_${randomUUID()}.0`)).toBe(true);
  });
});
