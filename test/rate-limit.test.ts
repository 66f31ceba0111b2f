// Rate limits over real Redis: per user and per client address on every /api/v1 route, the wrong-code
// guard, limits shared by two web processes, and requests that still pass while Redis is away.
import { serve, type ServerType } from '@hono/node-server';
import { Hono } from 'hono';
import type { Redis } from 'ioredis';
import { logger } from '../src/core/logger';
import { createRedis, waitForReady } from '../src/core/redis';
import { createApp, type AppDeps } from '../src/web/app';
import type { AppEnv } from '../src/web/context';
import { onError } from '../src/web/middleware/errors';
import { createCodeGuard, limitByAddress, RateLimitedError, type CodeGuard } from '../src/web/middleware/rate-limit';
import { closeSequelize, sequelize } from '../src/core/postgres';
import { initModels } from '../src/storage';
import * as codes from '../src/storage/codes';
import { createQueues, type Queues } from '../src/queues/connection';
import { freePort } from '../scripts/infra/process';
import { startTestApp, type TestApp } from './support/app';
import { uniqueId } from './support/fixtures';
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy';
import { tokenFor } from './support/tokens';

const CODE_SECRET = 'rate-limit-test-code-secret-0123456789';
// Nothing answers this path: every middleware runs, then 404, without Postgres or a queue.
const PATH = '/api/v1/nothing-here';
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

let queues: Queues;
const clients = new Set<Redis>();
const cleanups: (() => Promise<void>)[] = [];

/**
 * A Redis client for limiters, closed after the file. Ready before it is used: until then a limiter
 * counts in memory. `url` may point at nothing (then it is never ready).
 */
async function limiterRedis(url?: string): Promise<Redis> {
  const redis = createRedis('client', url);
  redis.on('error', () => undefined); // a Redis that is away is the point of some tests
  clients.add(redis);
  if (!url) await waitForReady(redis);
  return redis;
}

/** Disconnects a client now, and only once: each disconnect of a client whose socket is gone leaves a 2 s timer. */
function release(redis: Redis): void {
  clients.delete(redis);
  redis.disconnect();
}

type Limits = NonNullable<AppDeps['rateLimits']>;

/** One "web process": the real app with its own Redis connection and the given budgets. */
async function webProcess(limits: Limits, redis?: Redis) {
  const app = createApp({
    queues,
    redis: redis ?? (await limiterRedis()),
    log: logger(),
    jwtSecret: process.env.JWT_SECRET as string,
    codeSecret: CODE_SECRET,
    rateLimits: limits,
  });
  return async (opts: { token?: string; headers?: Record<string, string> } = {}) => {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    const res = await app.request(PATH, { headers });
    const text = await res.text();
    return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined };
  };
}

const off = { points: 0, durationS: 1 };
const prefix = () => `${uniqueId('rltest')}:rl`;

function expectRateLimited(reply: { status: number; headers: Headers; body: unknown }, maxS: number) {
  expect(reply.status).toBe(429);
  expect(reply.body).toEqual({ error: { code: 'RATE_LIMITED', message: expect.any(String) } });
  const retryAfter = reply.headers.get('retry-after');
  expect(retryAfter).toMatch(/^\d+$/);
  expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
  expect(Number(retryAfter)).toBeLessThanOrEqual(maxS);
}

beforeAll(async () => {
  // The issue route looks codes up in Postgres (the burst test).
  initModels(sequelize());
  queues = createQueues();
  await waitForReady(queues.connection);
});

afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  await queues?.close();
  for (const redis of clients) redis.disconnect();
  await closeSequelize();
});

describe('per-user limit', () => {
  it('refuses request N+1 of a user with 429 and Retry-After; another user is unaffected', async () => {
    const keys = prefix();
    const redis = await limiterRedis();
    const call = await webProcess({ prefix: keys, address: off, user: { points: 3, durationS: 60 } }, redis);
    const alice = uniqueId('alice');
    const [aliceToken, bobToken] = await Promise.all([tokenFor(alice), tokenFor(uniqueId('bob'))]);

    for (let i = 0; i < 3; i += 1) expect((await call({ token: aliceToken })).status).toBe(404);
    expectRateLimited(await call({ token: aliceToken }), 60);
    expect((await call({ token: bobToken })).status).toBe(404);
    // Counted after authentication: a request without a token is refused 401 and costs no budget.
    expect((await call()).status).toBe(401);

    // A user over budget is refused from memory: the refusals above and these never reached Redis.
    for (let i = 0; i < 10; i += 1) expect((await call({ token: aliceToken })).status).toBe(429);
    expect(await redis.get(`${keys}:user:${alice}`)).toBe('3');
  });

  it('lets a user go again once its window is over', async () => {
    const call = await webProcess({ prefix: prefix(), address: off, user: { points: 2, durationS: 1 } });
    const token = await tokenFor(uniqueId('u'));
    await call({ token });
    await call({ token });
    const refused = await call({ token });
    expectRateLimited(refused, 1);
    await sleep(Number(refused.headers.get('retry-after')) * 1000 + 100);
    expect((await call({ token })).status).toBe(404);
  });
});

describe('per-address limit', () => {
  it('counts per X-Forwarded-For address behind a trusted proxy, before authentication', async () => {
    const call = await webProcess({ prefix: prefix(), trustProxy: true, user: off, address: { points: 5, durationS: 60 } });
    const token = await tokenFor(uniqueId('u'));
    // What the client wrote comes first (made up here); the proxy appends the address it saw.
    const from = (ip: string) => ({ 'x-forwarded-for': `10.0.0.${Math.floor(Math.random() * 250)}, ${ip}` });
    for (let i = 0; i < 5; i += 1) expect((await call({ token, headers: from('203.0.113.7') })).status).toBe(404);
    // Before authentication: the same address without a token is refused 429, not 401.
    expectRateLimited(await call({ headers: from('203.0.113.7') }), 60);
    expectRateLimited(await call({ token, headers: from('203.0.113.7') }), 60);
    expect((await call({ token, headers: from('198.51.100.2') })).status).toBe(404);
    expect((await call({ headers: from('198.51.100.2') })).status).toBe(401);
  });

  it('counts every address of an IPv6 /64 as one, and an IPv4-mapped address as its IPv4 address', async () => {
    const call = await webProcess({ prefix: prefix(), trustProxy: true, user: off, address: { points: 2, durationS: 60 } });
    const from = (ip: string) => ({ 'x-forwarded-for': ip });
    expect((await call({ headers: from('2001:db8:1:2::a') })).status).toBe(401);
    expect((await call({ headers: from('2001:db8:1:2:ffff:ffff:ffff:b') })).status).toBe(401);
    expectRateLimited(await call({ headers: from('2001:DB8:1:2::c') }), 60); // a third address of the same /64
    expect((await call({ headers: from('2001:db8:1:3::a') })).status).toBe(401); // the next /64 is another client
    expect((await call({ headers: from('198.51.100.9') })).status).toBe(401);
    expect((await call({ headers: from('::ffff:198.51.100.9') })).status).toBe(401);
    expectRateLimited(await call({ headers: from('198.51.100.9') }), 60);
  });

  it('ignores X-Forwarded-For without TRUST_PROXY, so a client cannot pick a fresh address', async () => {
    const call = await webProcess({ prefix: prefix(), trustProxy: false, user: off, address: { points: 2, durationS: 60 } });
    expect((await call({ headers: { 'x-forwarded-for': '192.0.2.1' } })).status).toBe(401);
    expect((await call({ headers: { 'x-forwarded-for': '192.0.2.2' } })).status).toBe(401);
    expectRateLimited(await call({ headers: { 'x-forwarded-for': '192.0.2.3' } }), 60);
  });

  it("takes the socket's address on a real server", async () => {
    const app = new Hono<AppEnv>();
    app.onError(onError);
    app.use(
      '*',
      limitByAddress({ redis: await limiterRedis(), prefix: prefix(), trustProxy: false, budget: { points: 2, durationS: 60 } }),
    );
    app.get('/ip', (c) => c.text(c.get('clientIp')));
    const port = await freePort();
    const server: ServerType = serve({ fetch: app.fetch, port, hostname: '127.0.0.1' });
    cleanups.push(() => new Promise((resolve) => server.close(() => resolve())));
    const get = () => fetch(`http://127.0.0.1:${port}/ip`, { headers: { 'x-forwarded-for': '192.0.2.9' } });
    const first = await get();
    expect(await first.text()).toMatch(/^(::ffff:)?127\.0\.0\.1$/);
    expect((await get()).status).toBe(200);
    const refused = await get();
    expect(refused.status).toBe(429);
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
  });
});

describe('wrong-code guard', () => {
  const guardOf = async () =>
    createCodeGuard({ redis: await limiterRedis(), prefix: prefix(), perUser: 3, perAddress: 5, windowS: 60, blockS: 120 });
  /** One attempt: 0 when it may go ahead, else the Retry-After of the 429. */
  const attempt = async (guard: CodeGuard, who: { userId: string; ip: string }): Promise<number> => {
    try {
      await guard.takeAttempt(who);
      return 0;
    } catch (error) {
      expect(error).toBeInstanceOf(RateLimitedError);
      return (error as RateLimitedError).retryAfterS;
    }
  };
  /** An attempt with a code that exists: given back at once. */
  const rightCode = async (guard: CodeGuard, who: { userId: string; ip: string }): Promise<number> => {
    const refused = await attempt(guard, who);
    if (refused === 0) await guard.refundAttempt(who);
    return refused;
  };

  it('blocks a user after its N wrong codes, from any address; others stay free until their address is spent', async () => {
    const guard = await guardOf();
    const [u1, u2, u3, u4] = ['u1', 'u2', 'u3', 'u4'].map(uniqueId) as [string, string, string, string];
    const [ip1, ip2, ip3] = ['198.51.100.1', '198.51.100.2', '198.51.100.3'];

    for (let i = 0; i < 3; i += 1) expect(await attempt(guard, { userId: u1, ip: ip1 })).toBe(0); // three wrong codes
    const retryAfter = await attempt(guard, { userId: u1, ip: ip1 });
    expect(retryAfter).toBeGreaterThan(60); // the block (120 s), not what is left of the window
    expect(retryAfter).toBeLessThanOrEqual(120);
    expect(await rightCode(guard, { userId: u1, ip: ip3 })).toBeGreaterThan(0); // same user, another address, even a right code
    expect(await rightCode(guard, { userId: u2, ip: ip2 })).toBe(0); // another user, another address

    // ip1 has 3 of its 5 (the refused attempt was given back to it): two more wrong codes spend it.
    expect(await attempt(guard, { userId: u3, ip: ip1 })).toBe(0);
    expect(await attempt(guard, { userId: u3, ip: ip1 })).toBe(0);
    expect(await rightCode(guard, { userId: u4, ip: ip1 })).toBeGreaterThan(60); // a fresh user at the spent address
    expect(await rightCode(guard, { userId: u3, ip: ip3 })).toBe(0); // u3 itself has 2 of 3 elsewhere
    expect(await rightCode(guard, { userId: u4, ip: ip3 })).toBe(0); // the refusal at ip1 cost u4 nothing
  });

  it('lets right codes through without counting them', async () => {
    const guard = await guardOf();
    const who = { userId: uniqueId('lucky'), ip: '203.0.113.40' };
    for (let i = 0; i < 20; i += 1) expect(await rightCode(guard, who)).toBe(0);
    for (let i = 0; i < 3; i += 1) expect(await attempt(guard, who)).toBe(0);
    expect(await attempt(guard, who)).toBeGreaterThan(0);
  });

  it('counts a burst of concurrent guesses before any is looked up: of 50 at once, at most the budget reach the lookup', async () => {
    const perUser = 10;
    const guard = createCodeGuard({ redis: await limiterRedis(), prefix: prefix(), perUser, perAddress: 1_000, windowS: 600, blockS: 900 });
    const app = createApp({
      queues,
      redis: await limiterRedis(),
      log: logger(),
      jwtSecret: process.env.JWT_SECRET as string,
      codeSecret: CODE_SECRET,
      rateLimits: { prefix: prefix(), address: off, user: off, codeGuard: guard },
    });
    const token = await tokenFor(uniqueId('guesser'));
    const lookups = jest.spyOn(codes, 'policyOfCode');
    try {
      const replies = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          app.request('/api/v1/coupons/issue', {
            method: 'POST',
            headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
            body: JSON.stringify({ code: `GUESS${i}XYZ${uniqueId('c')}` }),
          }),
        ),
      );
      const statuses = replies.map((r) => r.status);
      expect(statuses.filter((s) => s === 202).length).toBeLessThanOrEqual(perUser);
      expect(statuses.filter((s) => s !== 202 && s !== 429)).toEqual([]);
      expect(lookups.mock.calls.length).toBeLessThanOrEqual(perUser);
    } finally {
      lookups.mockRestore();
    }
  });

  it('forgets wrong codes once their window is over', async () => {
    const guard = createCodeGuard({ redis: await limiterRedis(), prefix: prefix(), perUser: 2, perAddress: 0, windowS: 1, blockS: 60 });
    const who = { userId: uniqueId('slow'), ip: 'unknown' };
    expect(await attempt(guard, who)).toBe(0);
    expect(await attempt(guard, who)).toBe(0);
    await sleep(1_100);
    expect(await attempt(guard, who)).toBe(0);
    expect(await attempt(guard, who)).toBe(0);
  });

  it('answers 429 with Retry-After through the error handler', async () => {
    const guard = await guardOf();
    const who = { userId: uniqueId('http'), ip: '203.0.113.60' };
    for (let i = 0; i < 3; i += 1) await guard.takeAttempt(who);
    const app = new Hono<AppEnv>();
    app.onError(onError);
    app.post('/redeem', async (c) => {
      await guard.takeAttempt(who);
      return c.json({ ok: true });
    });
    const res = await app.request('/redeem', { method: 'POST' });
    expectRateLimited({ status: res.status, headers: res.headers, body: await res.json() }, 120);
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(60);
  });
});

describe('two web processes over one Redis', () => {
  it('share the per-user count', async () => {
    const keys = prefix();
    const limits = { prefix: keys, address: off, user: { points: 4, durationS: 60 } };
    const [web1, web2] = await Promise.all([webProcess(limits), webProcess(limits)]);
    const token = await tokenFor(uniqueId('u'));
    expect((await web1({ token })).status).toBe(404);
    expect((await web2({ token })).status).toBe(404);
    expect((await web1({ token })).status).toBe(404);
    expect((await web2({ token })).status).toBe(404);
    expectRateLimited(await web1({ token }), 60);
    expectRateLimited(await web2({ token }), 60);
  });

  it('share the wrong-code count: a user blocked through one is blocked in the other', async () => {
    const keys = prefix();
    const [guard1, guard2] = (await Promise.all([limiterRedis(), limiterRedis()])).map((redis) =>
      createCodeGuard({ redis, prefix: keys, perUser: 3, perAddress: 100, windowS: 60, blockS: 120 }),
    ) as [CodeGuard, CodeGuard];
    const who = { userId: uniqueId('u'), ip: '203.0.113.70' };
    await guard1.takeAttempt(who);
    await guard1.takeAttempt(who);
    await guard2.takeAttempt(who);
    await expect(guard1.takeAttempt(who)).rejects.toBeInstanceOf(RateLimitedError);
    await expect(guard2.takeAttempt(who)).rejects.toBeInstanceOf(RateLimitedError);
  });
});

describe('Redis away', () => {
  it('lets requests through when Redis cannot be reached, still limiting in memory, never a 5xx', async () => {
    const nowhere = await limiterRedis(`redis://127.0.0.1:${await freePort()}`);
    const call = await webProcess(
      { prefix: prefix(), address: { points: 1_000, durationS: 60 }, user: { points: 3, durationS: 60 } },
      nowhere,
    );
    const [alice, bob] = await Promise.all([tokenFor(uniqueId('alice')), tokenFor(uniqueId('bob'))]);
    const started = Date.now();
    const statuses = [];
    for (let i = 0; i < 5; i += 1) statuses.push((await call({ token: alice })).status);
    statuses.push((await call({ token: bob })).status);
    expect(statuses).toEqual([404, 404, 404, 429, 429, 404]);
    expect(Date.now() - started).toBeLessThan(1_000); // not waiting on reconnects

    const guard = createCodeGuard({ redis: nowhere, prefix: prefix(), perUser: 2, perAddress: 100, windowS: 60, blockS: 60 });
    const who = { userId: uniqueId('u'), ip: '203.0.113.80' };
    await guard.takeAttempt(who);
    await guard.takeAttempt(who);
    await expect(guard.takeAttempt(who)).rejects.toBeInstanceOf(RateLimitedError);
    // ioredis keeps a 2 s timer (disconnectTimeout) after disconnecting a client with no live socket:
    // the file waits it out, so jest exits cleanly.
    release(nowhere);
    const disconnectedAt = Date.now();
    cleanups.push(() => sleep(Math.max(0, disconnectedAt + 2_100 - Date.now())));
  });

  it('keeps answering when Redis goes away mid-run, and counts in Redis again once it is back', async () => {
    const target = new URL(process.env.REDIS_URL as string);
    const proxy: TcpProxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 6379) });
    cleanups.push(() => proxy.close());
    const redis = await limiterRedis(`redis://127.0.0.1:${proxy.port}${target.pathname}`);
    await waitForReady(redis);
    const keys = prefix();
    const call = await webProcess({ prefix: keys, address: off, user: { points: 1_000, durationS: 60 } }, redis);
    const user = uniqueId('u');
    const token = await tokenFor(user);
    expect((await call({ token })).status).toBe(404);

    await proxy.pause('refuse');
    for (let i = 0; i < 50 && redis.status === 'ready'; i += 1) await sleep(20);
    expect(redis.status).not.toBe('ready');
    const during = await Promise.all(Array.from({ length: 20 }, () => call({ token })));
    expect(during.map((r) => r.status)).toEqual(Array(20).fill(404));

    await proxy.resume();
    await waitForReady(redis, 10_000);
    expect((await call({ token })).status).toBe(404);
    // The requests while it was away were counted in memory; Redis holds the first and the last.
    expect(await (await limiterRedis()).get(`${keys}:user:${user}`)).toBe('2');
    release(redis); // while its socket is open: see above
  });
});

describe('the configured limits', () => {
  let t: TestApp;

  beforeAll(async () => {
    t = await startTestApp();
  });

  afterAll(async () => {
    await t?.close();
  });

  it('let a burst of ordinary use through (defaults), and never limit /health', async () => {
    const token = await tokenFor(uniqueId('shopper'));
    const replies = await Promise.all(Array.from({ length: 20 }, () => t.call('GET', PATH, { token })));
    expect(replies.map((r) => r.status)).toEqual(Array(20).fill(404));
    const health = await Promise.all(Array.from({ length: 100 }, () => t.call('GET', '/health/live')));
    expect(health.every((r) => r.status === 200)).toBe(true);
  });
});
