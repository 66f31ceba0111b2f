// Redis goes down in the middle of a sale, stopped (SIGTERM: it writes its append-only file out),
// killed (SIGKILL: no shutdown at all) or killed with its host (the last second of its append-only
// file, written but not yet on disk, lost), while admitted requests are in flight and stock is left:
// the web answers 503 while it is away (never a 202 it cannot keep), the workers resume on their own
// when it is back, the stock stays exact, and every accepted request settles, except, after a host
// crash, requests Redis forgot before a worker wrote their coupon (404: ask again).
import { randomUUID } from 'node:crypto';
import { readFileSync, rmSync, statSync, truncateSync } from 'node:fs';
import path from 'node:path';
import IORedis from 'ioredis';
import { eventually } from './support/checkout';
import { Api, mapLimit, type Reply } from './support/http';
import { closeDb, couponsOf } from './support/db';
import { policyBody, uniqueId } from './support/fixtures';
import { startStack, type Stack } from './support/stack';
import { slowPostgres, type TcpProxy } from './support/tcp-proxy';
import { adminToken, tokenFor } from './support/tokens';
import { ensureRedis } from '../scripts/infra/redis';
import { freePort, isPortOpen, repoRoot, waitUntil, type Service } from '../scripts/infra/process';
import { parseRequestId } from '../src/queues/names';
import { redisKeysUnder } from '../src/core/redis-keys';

const quiet = { info: () => undefined, warn: () => undefined };
const STOCK = 150;
let redisUrl: string;
let redisPort: number;
let redis: Service;
let stack: Stack;
let api: Api;
let pgProxy: TcpProxy;

beforeAll(async () => {
  // A Redis of this test's own (append-only file, so accepted jobs survive the restart).
  redisPort = await freePort();
  rmSync(path.join(repoRoot(), '.data', 'redis', String(redisPort)), { recursive: true, force: true });
  redisUrl = `redis://127.0.0.1:${redisPort}`;
  redis = await ensureRedis(redisUrl, quiet);
  expect(redis.started).toBe(true);
  // The worker reaches Postgres through a proxy adding 20 ms each way, so an admitted request stays
  // pending (its slot held, its coupon not written) long enough for Redis to go down under it.
  const slow = await slowPostgres(20);
  pgProxy = slow.proxy;
  stack = await startStack({
    workers: 0,
    name: 'redis-restart',
    env: { REDIS_URL: redisUrl, JOB_LOCK_MS: '3000', JOB_STALLED_INTERVAL_MS: '1000' },
  });
  await stack.startWorker({ DATABASE_URL: slow.databaseUrl });
  api = new Api(stack.baseUrl, 64);
});

afterAll(async () => {
  await api?.close();
  await stack?.stop();
  await redis?.stop();
  await pgProxy?.close();
  await closeDb();
});

/** What the admission step of a policy holds: units taken (slots handed out and not given back) and admissions pending. */
async function admissionState(policyId: string): Promise<{ taken: number; pending: number }> {
  const client = new IORedis(redisUrl, { maxRetriesPerRequest: 1 });
  const keys = redisKeysUnder(stack.queuePrefix).admission(policyId);
  try {
    const [next, free, pending] = await Promise.all([client.hget(keys.stock, 'next'), client.llen(keys.free), client.hlen(keys.pending)]);
    return { taken: Math.max(0, Number(next ?? 1) - 1 - free), pending };
  } finally {
    client.disconnect();
  }
}

/** SIGKILLs the Redis server (its pid from INFO) and waits until its port is closed. */
async function killRedis(): Promise<void> {
  const client = new IORedis(redisUrl, { maxRetriesPerRequest: 1 });
  const info = await client.info('server').finally(() => client.disconnect());
  const pid = Number(/process_id:(\d+)/.exec(info)?.[1]);
  expect(pid).toBeGreaterThan(0);
  process.kill(pid, 'SIGKILL');
  await waitUntil('redis killed', async () => !(await isPortOpen('127.0.0.1', redisPort, 300)), { timeoutMs: 10_000, intervalMs: 100 });
}

const stopRedis = () => redis.stop();

/** The sizes of Redis's append-only file over time, sampled while a test runs (see crashHost). */
let aofSizes: { at: number; size: number }[] = [];
function aofFile(): string {
  const dir = path.join(repoRoot(), '.data', 'redis', String(redisPort), 'appendonlydir');
  const incr = /file (\S+) seq \d+ type i/.exec(readFileSync(path.join(dir, 'appendonly.aof.manifest'), 'utf8'))?.[1];
  if (!incr) throw new Error('no incremental append-only file in the manifest');
  return path.join(dir, incr);
}
function sampleAof(): () => void {
  aofSizes = [];
  const timer = setInterval(() => {
    try {
      aofSizes.push({ at: Date.now(), size: statSync(aofFile()).size });
    } catch {
      // Redis is down or starting: nothing to sample.
    }
  }, 50);
  return () => clearInterval(timer);
}

/**
 * A host crash: SIGKILL, and the append-only file cut back to its length of a second before, what
 * `appendfsync everysec` may lose when the machine itself goes down.
 */
async function crashHost(): Promise<void> {
  const file = aofFile();
  const aSecondAgo = [...aofSizes].reverse().find((s) => s.at <= Date.now() - 1_000) ?? aofSizes[0];
  await killRedis();
  const written = statSync(file).size;
  expect(aSecondAgo && aSecondAgo.size < written).toBe(true);
  truncateSync(file, aSecondAgo?.size);
}

type Asked = { user: string; reply: Reply };

/** Whether Redis still holds the outcome record of each request. */
async function recorded(requestIds: string[]): Promise<boolean[]> {
  const client = new IORedis(redisUrl, { maxRetriesPerRequest: 1 });
  try {
    return await Promise.all(
      requestIds.map(async (id) => {
        const { jobId, index } = parseRequestId(id);
        return (await client.hexists(redisKeysUnder(stack.queuePrefix).outcomes(jobId), String(index))) === 1;
      }),
    );
  } finally {
    client.disconnect();
  }
}

/** A sale of STOCK units and its 600 shoppers, each asking under an Idempotency-Key of its own. */
interface Sale {
  policyId: string;
  users: string[];
  tokens: Map<string, string>;
  /** The shoppers that wait for the outcome in the POST (the sale path); the rest poll. */
  waits: Set<string>;
  /** The shopper asks (again) for a coupon, under its key. */
  ask: (user: string) => Promise<Asked>;
}

async function openSale(): Promise<Sale> {
  const admin = await adminToken();
  const created = await api.post('/api/v1/coupons/policies', admin, policyBody({ totalQuantity: STOCK }));
  expect(created.status).toBe(201);
  const policyId = created.body.id as string;
  const users = Array.from({ length: 600 }, (_, i) => uniqueId(`rr${i}`));
  const tokens = new Map(await Promise.all(users.map(async (u) => [u, await tokenFor(u)] as const)));
  // Every other shopper waits for the outcome in the POST (the sale path), the rest poll. Each asks
  // under an Idempotency-Key of its own and asks again under the same key, as a careful client
  // does: a 503 whose add Redis ran after all then answers that request, not a new one.
  const waits = new Set(users.filter((_, i) => i % 2 === 0));
  const keys = new Map(users.map((u) => [u, randomUUID()]));
  const ask = (user: string) =>
    api
      .call('POST', '/api/v1/coupons/issue', {
        token: tokens.get(user),
        body: { policyId },
        headers: { 'idempotency-key': keys.get(user)!, ...(waits.has(user) && { prefer: 'wait=10' }) },
      })
      .then((reply): Asked => ({ user, reply }));
  return { policyId, users, tokens, waits, ask };
}

/**
 * Fewer shoppers than units ask before Redis goes back up, so stock is left by construction.
 * Redis goes down once some have their answer and others hold admissions whose coupon is not
 * written. Their answers.
 */
async function askAcrossTheOutage(sale: Sale, takeRedisDown: () => Promise<void>): Promise<Asked[]> {
  const early = sale.users.slice(0, 140);
  let answered = 0;
  const outage = (async () => {
    await eventually(
      async () => answered,
      (n) => n >= 30,
      60_000,
      '30 answers',
    );
    const atOutage = await eventually(
      () => admissionState(sale.policyId),
      (s) => s.pending > 0,
      60_000,
      'admissions in flight',
    );
    await takeRedisDown();
    return atOutage;
  })();
  outage.catch(() => undefined); // awaited below, once the requests are in
  const inFlight = await mapLimit(early, 16, async (user) => {
    const asked = await sale.ask(user);
    answered += 1;
    return asked;
  });
  const atOutage = await outage;
  expect(atOutage.pending).toBeGreaterThan(0); // admitted requests were in flight
  expect(atOutage.taken).toBeLessThan(STOCK); // and stock was left
  expect(inFlight.map((r) => r.reply.status).filter((s) => ![200, 202, 503].includes(s))).toEqual([]);
  return inFlight;
}

/** While Redis is away: 60 more shoppers are each told 503, and so is the readiness probe. Their answers. */
async function askWhileAway(sale: Sale): Promise<Asked[]> {
  const during = await mapLimit(sale.users.slice(140, 200), 16, sale.ask);
  expect(during.map((r) => r.reply.status)).toEqual(Array(60).fill(503));
  expect((await api.get('/health/ready')).status).toBe(503);
  return during;
}

/** Redis starts again (on its file) and the web is ready once more. */
async function redisBack(): Promise<void> {
  redis = await ensureRedis(redisUrl, quiet);
  expect(redis.started).toBe(true);
  await eventually(
    async () => (await api.get('/health/ready')).status,
    (s) => s === 200,
    30_000,
    'ready again',
  );
}

/** Those refused while Redis was away ask again, as a client told 503 would, and the rest ask. Their answers. */
async function askAfter(sale: Sale, before: Asked[]): Promise<Asked[]> {
  const refused = before.filter((r) => r.reply.status === 503).map((r) => r.user);
  const after = await mapLimit([...refused, ...sale.users.slice(200)], 32, sale.ask);
  expect(after.filter((r) => r.reply.status !== 200 && r.reply.status !== 202)).toEqual([]); // outside the outage, every request is taken
  return after;
}

/** Every accepted request's final job view; a request Redis forgot (`forgets`) is unknown to the job route (404). */
async function settleAccepted(sale: Sale, accepted: Asked[], forgets: boolean): Promise<any[]> {
  expect(accepted.filter((r) => r.reply.status === 200 && !sale.waits.has(r.user))).toEqual([]);
  // A request Redis forgot is unknown to the job route (404); the others settle.
  const jobs = await mapLimit(accepted, 32, ({ user, reply }): Promise<any> =>
    reply.status === 200
      ? Promise.resolve(reply.body)
      : api.settle(reply.body.jobId, sale.tokens.get(user) as string, 90_000).catch((error: Error) => {
          if (forgets && / HTTP 404 /.test(error.message)) return { status: 'unknown' };
          throw error;
        }),
  );
  expect(jobs.map((j) => j.status).filter((s) => s === 'pending' || s === 'failed')).toEqual([]);
  if (forgets) {
    // The host crash really lost acknowledged requests: some have no record in Redis any more.
    const kept = await recorded(accepted.map((r) => r.reply.body.jobId as string));
    expect(kept.filter((k) => !k).length).toBeGreaterThan(0);
  }
  return jobs;
}

/**
 * Told "won" as often as there are coupons, the stock all issued, and every other request told
 * SOLD_OUT (or, after a host crash, unknown); the shoppers told "won" are exactly the holders.
 */
async function expectExactStock(policyId: string, accepted: Asked[], jobs: any[]): Promise<void> {
  const statuses = jobs.map((j) => j.status);
  const rows = await couponsOf(policyId);
  // The refusals by reason, for a failure's message.
  const refusals: Record<string, number> = {};
  for (const j of jobs) if (j.status === 'rejected') refusals[j.reason?.code] = (refusals[j.reason?.code] ?? 0) + 1;
  const soldOut = accepted.length - STOCK - statuses.filter((st) => st === 'unknown').length;
  expect({ succeeded: statuses.filter((st) => st === 'succeeded').length, coupons: rows.length, refusals }).toEqual({
    succeeded: STOCK,
    coupons: STOCK,
    refusals: soldOut > 0 ? { SOLD_OUT: soldOut } : {},
  });
  // The shoppers told "won" are exactly the holders, whichever way they asked.
  const winners = accepted.filter((_, i) => jobs[i].status === 'succeeded').map((r) => r.user);
  // (A forgotten request whose coupon was written is told so from Postgres; one told "unknown" holds none.)
  expect(new Set(rows.map((r) => r.user_id))).toEqual(new Set(winners));
  expect(new Set(rows.map((r) => r.user_id)).size).toBe(STOCK);
  expect(rows.map((r) => r.slot)).toEqual(Array.from({ length: STOCK }, (_, i) => i + 1));
}

describe.each([
  ['stopped (SIGTERM)', stopRedis],
  ['killed (SIGKILL)', killRedis],
  ['killed with its host (its last second lost)', crashHost],
])('Redis %s mid-sale', (_how, takeRedisDown) => {
  const forgets = takeRedisDown === crashHost;
  let stopSampling = () => undefined as void;
  beforeEach(() => {
    stopSampling = sampleAof();
  });
  afterEach(() => stopSampling());

  it('answers 503 while Redis is away, then resumes, and every accepted request settles with exact stock', async () => {
    const sale = await openSale();
    const inFlight = await askAcrossTheOutage(sale, takeRedisDown);
    const during = await askWhileAway(sale);
    await redisBack();
    const after = await askAfter(sale, [...inFlight, ...during]);
    const accepted = [...inFlight, ...after].filter((r) => r.reply.status === 202 || r.reply.status === 200);
    const jobs = await settleAccepted(sale, accepted, forgets);
    await expectExactStock(sale.policyId, accepted, jobs);
  });
});
