// Redis restarts in the middle of a sale: the web answers 503 while it is away (never a 202 it
// cannot keep), the workers resume on their own when it is back, and the stock stays exact.
import { rmSync } from 'node:fs';
import path from 'node:path';
import { Api, mapLimit } from './support/http';
import { closeDb, couponsOf } from './support/db';
import { policyBody, uniqueId } from './support/fixtures';
import { startStack, type Stack } from './support/stack';
import { adminToken, tokenFor } from './support/tokens';
import { ensureRedis } from '../scripts/infra/redis';
import { freePort, repoRoot, type Service } from '../scripts/infra/process';

const quiet = { info: () => undefined, warn: () => undefined };
let redisUrl: string;
let redis: Service;
let stack: Stack;
let api: Api;

beforeAll(async () => {
  // A Redis of this test's own (append-only file, so accepted jobs survive the restart).
  const port = await freePort();
  rmSync(path.join(repoRoot(), '.data', 'redis', String(port)), { recursive: true, force: true });
  redisUrl = `redis://127.0.0.1:${port}`;
  redis = await ensureRedis(redisUrl, quiet);
  stack = await startStack({ workers: 1, name: 'redis-restart', env: { REDIS_URL: redisUrl, JOB_LOCK_MS: '3000', JOB_STALLED_INTERVAL_MS: '1000' } });
  api = new Api(stack.baseUrl, 64);
});

afterAll(async () => {
  await api?.close();
  await stack?.stop();
  await redis?.stop();
  await closeDb();
});

describe('a Redis restart mid-sale', () => {
  it('answers 503 while Redis is away, then resumes, and every accepted request settles with exact stock', async () => {
    const admin = await adminToken();
    const created = await api.post('/api/v1/coupons/policies', admin, policyBody({ totalQuantity: 150 }));
    expect(created.status).toBe(201);
    const policyId = created.body.id as string;
    const users = Array.from({ length: 600 }, (_, i) => uniqueId(`rr${i}`));
    const tokens = new Map(await Promise.all(users.map(async (u) => [u, await tokenFor(u)] as const)));
    // Every other shopper waits for the outcome in the POST (the sale path), the rest poll.
    const waits = new Set(users.filter((_, i) => i % 2 === 0));
    const ask = (user: string) =>
      api
        .call('POST', '/api/v1/coupons/issue', { token: tokens.get(user), body: { policyId }, headers: waits.has(user) ? { prefer: 'wait=10' } : {} })
        .then((reply) => ({ user, reply }));

    const before = await mapLimit(users.slice(0, 200), 32, ask);

    await redis.stop();
    const during = await mapLimit(users.slice(200, 260), 16, ask);
    expect(during.map((r) => r.reply.status)).toEqual(Array(60).fill(503));
    expect((await api.get('/health/ready')).status).toBe(503);

    redis = await ensureRedis(redisUrl, quiet);
    let ready = 503;
    for (let i = 0; i < 100 && ready !== 200; i += 1) {
      ready = (await api.get('/health/ready')).status;
      if (ready !== 200) await new Promise((r) => setTimeout(r, 200));
    }
    expect(ready).toBe(200);
    const after = await mapLimit([...users.slice(200, 260), ...users.slice(260)], 32, ask);

    const accepted = [...before, ...after].filter((r) => r.reply.status === 202 || r.reply.status === 200);
    expect(accepted.length).toBe(before.length + after.length); // outside the outage, every request is taken
    expect(accepted.filter((r) => r.reply.status === 200 && !waits.has(r.user))).toEqual([]);
    const jobs = await mapLimit(accepted, 32, ({ user, reply }): Promise<any> =>
      reply.status === 200 ? Promise.resolve(reply.body) : api.settle(reply.body.jobId, tokens.get(user) as string, 90_000),
    );
    const statuses = jobs.map((j) => j.status);
    expect(statuses.filter((s) => s === 'pending' || s === 'failed')).toEqual([]);
    expect(statuses.filter((s) => s === 'succeeded')).toHaveLength(150);

    const rows = await couponsOf(policyId);
    expect(rows).toHaveLength(150);
    // The shoppers told "won" are exactly the holders, whichever way they asked.
    const winners = accepted.filter((_, i) => jobs[i].status === 'succeeded').map((r) => r.user);
    expect(new Set(rows.map((r) => r.user_id))).toEqual(new Set(winners));
    expect(new Set(rows.map((r) => r.user_id)).size).toBe(150);
    expect(rows.map((r) => r.slot)).toEqual(Array.from({ length: 150 }, (_, i) => i + 1));
  });
});
