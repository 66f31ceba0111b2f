// Bull Board at /admin/queues: every path under it (page, static assets, API) needs the Basic
// credentials; without configured credentials it does not exist.
import type { Redis } from 'ioredis';
import { logger } from '../core/logger';
import { closeSequelize, sequelize } from '../core/postgres';
import { createRedis, waitForReady } from '../core/redis';
import { createApp } from '../ingress/app';
import { initModels } from '../models';
import { initUserCouponCache } from '../models/user-coupon-cache';
import { createQueues, type Queues } from '../queues/connection';
import { QUEUES } from '../queues/names';
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
  board = createApp({ ...deps, bullBoard: { username: USER, password: PASSWORD } });
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
    const paths = ['/admin/queues', '/admin/queues/', '/admin/queues/queue/issue', `/admin/queues/${css}`, '/admin/queues/api/queues', '/admin/queues/api/redis/stats', '/admin/queues/nothing-here'];
    const wrong = [undefined, basic(USER, 'wrong'), basic('other', PASSWORD), basic(USER, `${PASSWORD}x`), 'Bearer x', basic('', '')];
    for (const path of paths) {
      for (const authorization of wrong) {
        const res = await board.request(path, { headers: authorization ? { authorization } : {} });
        expect([path, authorization, res.status]).toEqual([path, authorization, 401]);
        expect(res.headers.get('www-authenticate')).toBe('Basic realm="Bull Board"');
        expect(await res.text()).not.toContain('Bull');
      }
    }
    // Changing calls too: nothing happens without credentials.
    const pause = await board.request(`/admin/queues/api/queues/${QUEUES.payments}/pause`, { method: 'PUT' });
    expect(pause.status).toBe(401);
    expect(await queues.get(QUEUES.payments).isPaused()).toBe(false);
    const add = await board.request(`/admin/queues/api/queues/${QUEUES.issue}/add`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
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
      headers: { authorization: basic(USER, PASSWORD), 'content-type': 'application/x-www-form-urlencoded', origin: 'https://evil.example' },
    });
    expect(res.status).toBe(403);
  });

  it('leaves the API to its bearer tokens: Basic credentials open nothing under /api/v1', async () => {
    const res = await board.request('/api/v1/coupons/policies', { headers: { authorization: basic(USER, PASSWORD) } });
    expect(res.status).toBe(401);
    expect(await res.json()).toEqual({ error: { code: 'UNAUTHENTICATED', message: expect.any(String) } });
  });

  it('does not exist without configured credentials: 404 on every path', async () => {
    for (const path of ['/admin/queues', '/admin/queues/', '/admin/queues/api/queues', '/admin/queues/static/favicon.ico']) {
      const res = await withoutBoard.request(path, { headers: { authorization: basic(USER, PASSWORD) } });
      expect([path, res.status]).toEqual([path, 404]);
      expect(await res.json()).toMatchObject({ error: { code: 'NOT_FOUND' } });
    }
  });
});
