// Bull Board at /admin/queues: every path under it (page, static assets, API) needs the Basic
// credentials; without configured credentials it does not exist.
import type { Redis } from 'ioredis';
import { config, parseConfig } from '../src/core/config';
import { logger } from '../src/core/logger';
import { closeSequelize, sequelize } from '../src/core/postgres';
import { createRedis, waitForReady } from '../src/core/redis';
import { createApp } from '../src/web/app';
import { initModels } from '../src/storage';
import { initUserCouponCache } from '../src/storage/cache/user-coupon-cache';
import { createQueues, type Queues } from '../src/queues/connection';
import { QUEUES } from '../src/queues/names';
import { uniqueId } from './support/fixtures';
import { testSecret } from './support/tokens';

const USER = 'ops';
const PASSWORD = 'board-password-0123456789';
const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

let queues: Queues;
let redis: Redis;
let board: ReturnType<typeof createApp>;
let withoutBoard: ReturnType<typeof createApp>;

beforeAll(async () => {
  initModels(sequelize());
  queues = createQueues();
  redis = createRedis('client');
  initUserCouponCache(redis);
  await waitForReady(queues.connection);
  const deps = { queues, redis, log: logger(), jwtSecret: testSecret() };
  // The wrong credentials of these tests all come from one address: no lockout here (tested below).
  board = createApp({ ...deps, bullBoard: { username: USER, password: PASSWORD }, boardLockout: { failures: 1_000_000 } });
  withoutBoard = createApp(deps);
});

afterAll(async () => {
  await queues?.close();
  redis?.disconnect();
  await closeSequelize();
});

/** The dashboard page's first stylesheet, e.g. static/css/main.88d71b4bd7.css. */
async function stylesheetOf(): Promise<string> {
  const page = await board.request('/admin/queues', { headers: { authorization: basic(USER, PASSWORD) } });
  const href = /href="(static\/css\/[^"]+\.css)"/.exec(await page.text())?.[1];
  if (!href) throw new Error('no stylesheet in the Bull Board page');
  return href;
}

describe('Bull Board', () => {
  it('answers 401 with a Basic challenge without credentials, or with wrong ones, on every path under /admin/queues', async () => {
    const css = await stylesheetOf();
    const paths = [
      '/admin/queues',
      '/admin/queues/',
      '/admin/queues/queue/issue',
      `/admin/queues/${css}`,
      '/admin/queues/api/queues',
      '/admin/queues/api/redis/stats',
      '/admin/queues/nothing-here',
    ];
    const wrong = [undefined, basic(USER, 'wrong'), basic('other', PASSWORD), basic(USER, `${PASSWORD}x`), 'Bearer x', basic('', '')];
    for (const path of paths) {
      for (const authorization of wrong) {
        const res = await board.request(path, { headers: authorization ? { authorization } : {} });
        expect([path, authorization, res.status]).toEqual([path, authorization, 401]);
        expect(res.headers.get('www-authenticate')).toBe('Basic realm="Bull Board"');
        const text = await res.text();
        expect(text).not.toContain('Bull');
        expect(JSON.parse(text)).toEqual({ error: { code: 'UNAUTHENTICATED', message: expect.any(String) } });
      }
    }
    // Changing calls too: nothing happens without credentials.
    const pause = await board.request(`/admin/queues/api/queues/${QUEUES.payments}/pause`, { method: 'PUT' });
    expect(pause.status).toBe(401);
    expect(await queues.get(QUEUES.payments).isPaused()).toBe(false);
    const add = await board.request(`/admin/queues/api/queues/${QUEUES.issue}/add`, {
      method: 'POST',
      body: '{}',
      headers: { 'content-type': 'application/json' },
    });
    expect(add.status).toBe(401);
  });

  it('answers 200 with credentials: the page, its static assets and every queue through the API', async () => {
    const auth = { authorization: basic(USER, PASSWORD) };
    const page = await board.request('/admin/queues', { headers: auth });
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain('<base href="/admin/queues/"');
    expect((await board.request('/admin/queues/queue/issue', { headers: auth })).status).toBe(200);

    const css = await board.request(`/admin/queues/${await stylesheetOf()}`, { headers: auth });
    expect(css.status).toBe(200);
    expect(css.headers.get('content-type')).toContain('text/css');

    const api = await board.request('/admin/queues/api/queues', { headers: auth });
    expect(api.status).toBe(200);
    const body = (await api.json()) as { queues: { name: string }[] };
    expect(body.queues.map((q) => q.name).sort()).toEqual(Object.values(QUEUES).sort());
  });

  it('refuses a cross-site form post even with credentials (a browser sends cached Basic credentials along)', async () => {
    const res = await board.request(`/admin/queues/api/queues/${QUEUES.issue}/add`, {
      method: 'POST',
      body: 'name=x',
      headers: {
        authorization: basic(USER, PASSWORD),
        'content-type': 'application/x-www-form-urlencoded',
        origin: 'https://evil.example',
      },
    });
    expect(res.status).toBe(403);
  });

  it('leaves the API to its bearer tokens: Basic credentials open nothing under /api/v1', async () => {
    const res = await board.request('/api/v1/coupons/policies', { headers: { authorization: basic(USER, PASSWORD) } });
    expect(res.status).toBe(401);
    expect(await res.json()).toEqual({ error: { code: 'UNAUTHENTICATED', message: expect.any(String) } });
  });

  it('locks an address out after its wrong passwords: 429 with Retry-After, right password or not; other addresses go on', async () => {
    const limits = { trustProxy: true, prefix: `${uniqueId('board')}:rl` };
    const app = createApp({
      queues,
      redis,
      log: logger(),
      jwtSecret: testSecret(),
      bullBoard: { username: USER, password: PASSWORD },
      rateLimits: limits,
    });
    const from = (ip: string, authorization: string) => ({ headers: { authorization, 'x-forwarded-for': ip } });
    // A burst of guesses at once: each is counted before it is answered, so only the budget get a verdict.
    const burst = await Promise.all(
      Array.from({ length: 30 }, (_, i) => app.request('/admin/queues', from('2001:db8:7:7::1', basic(USER, `guess-${i}`)))),
    );
    const statuses = burst.map((r) => r.status);
    expect(statuses.filter((s) => s === 401)).toHaveLength(config().BULL_BOARD_AUTH_FAILURES);
    expect(statuses.filter((s) => s === 429)).toHaveLength(30 - config().BULL_BOARD_AUTH_FAILURES);
    // Locked out: the right password too, and from any address of the same /64.
    const locked = await app.request('/admin/queues', from('2001:db8:7:7::2', basic(USER, PASSWORD)));
    expect(locked.status).toBe(429);
    expect(Number(locked.headers.get('retry-after'))).toBeGreaterThan(60);
    expect(await locked.json()).toEqual({ error: { code: 'RATE_LIMITED', message: expect.any(String) } });
    expect((await app.request('/admin/queues', from('203.0.113.9', basic(USER, PASSWORD)))).status).toBe(200);
    // No credentials at all (a browser's first request) is a challenge, not a guess.
    for (let i = 0; i < 20; i += 1)
      expect((await app.request('/admin/queues', { headers: { 'x-forwarded-for': '203.0.113.10' } })).status).toBe(401);
    expect((await app.request('/admin/queues', from('203.0.113.10', basic(USER, PASSWORD)))).status).toBe(200);
  });

  it('refuses a password shorter than 12 characters: the web does not start, the board is not built', () => {
    expect(() => parseConfig({ BULL_BOARD_USER: 'ops', BULL_BOARD_PASSWORD: 'short-pass1' })).toThrow(
      /BULL_BOARD_PASSWORD: must be at least 12 characters/,
    );
    expect(parseConfig({ BULL_BOARD_USER: 'ops', BULL_BOARD_PASSWORD: 'long-enough-1' }).BULL_BOARD_PASSWORD).toBe('long-enough-1');
    expect(() =>
      createApp({ queues, redis, log: logger(), jwtSecret: testSecret(), bullBoard: { username: USER, password: 'short-pass1' } }),
    ).toThrow(/at least 12/);
  });

  it('does not exist without configured credentials: 404 on every path', async () => {
    for (const path of ['/admin/queues', '/admin/queues/', '/admin/queues/api/queues', '/admin/queues/static/favicon.ico']) {
      const res = await withoutBoard.request(path, { headers: { authorization: basic(USER, PASSWORD) } });
      expect([path, res.status]).toEqual([path, 404]);
      expect(await res.json()).toMatchObject({ error: { code: 'NOT_FOUND' } });
    }
  });
});
