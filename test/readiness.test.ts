// The web process's readiness follows Redis: 503 while it is unreachable, 200 again once it is back,
// in the same process (no restart), and 503 while draining.
import type { ChildProcess } from 'node:child_process';
import { sequelize, closeSequelize } from '../core/postgres';
import { waitForReady } from '../core/redis';
import { createQueues } from '../queues/connection';
import { healthRoutes } from '../ingress/routes/health';
import { Api } from './support/http';
import { uniqueId } from './support/fixtures';
import { freePort } from '../scripts/infra/process';
import { launch, stopProcess, waitForLine } from './support/stack';
import { startTcpProxy, viaProxy, type TcpProxy } from './support/tcp-proxy';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls /health/ready until it answers `status`; returns that answer and how long it took. */
async function readyUntil(api: Api, status: number, timeoutMs: number) {
  const started = Date.now();
  for (;;) {
    const reply = await api.get('/health/ready');
    if (reply.status === status || Date.now() - started > timeoutMs) return { ...reply, ms: Date.now() - started };
    await sleep(100);
  }
}

describe('web readiness while Redis goes away and comes back', () => {
  let proxy: TcpProxy;
  let web: ChildProcess;
  let api: Api;

  beforeAll(async () => {
    const redis = new URL(process.env.REDIS_URL as string);
    proxy = await startTcpProxy({ host: redis.hostname, port: Number(redis.port || 6379) });
    const port = await freePort();
    const prefix = uniqueId('q');
    // Every Redis connection of the process goes through the proxy.
    web = launch('readiness-web', 'ingress/server.ts', {
      PORT: String(port),
      QUEUE_PREFIX: prefix,
      REDIS_URL: viaProxy(process.env.REDIS_URL as string, proxy),
      NODE_ENV: 'test',
      LOG_LEVEL: 'info',
    });
    await waitForLine(web, 'web listening');
    api = new Api(`http://127.0.0.1:${port}`, 4);
  });

  afterAll(async () => {
    await api?.close();
    if (web) await stopProcess(web);
    await proxy?.close();
  });

  it('answers 503 with redis down within seconds, and 200 again when Redis is back, same process', async () => {
    const pid = web.pid;
    const before = await api.get('/health/ready');
    expect(before.status).toBe(200);
    expect(before.body).toEqual({ status: 'ready', checks: { postgres: 'ok', redis: 'ok', queues: 'ok' } });
    expect((await api.get('/health/live')).status).toBe(200);

    await proxy.pause('refuse');
    const down = await readyUntil(api, 503, 5_000);
    expect(down.status).toBe(503);
    expect(down.ms).toBeLessThan(5_000);
    expect(down.body).toEqual({ status: 'unavailable', checks: { postgres: 'ok', redis: 'down', queues: 'down' } });
    // Liveness is not readiness: the process is fine, a restart would not help.
    expect((await api.get('/health/live')).status).toBe(200);
    // Stays down while Redis is away (no stale "ok" from a cached answer).
    await sleep(1_500);
    expect((await api.get('/health/ready')).status).toBe(503);

    await proxy.resume();
    // The producer connection retries every 2 s at most.
    const up = await readyUntil(api, 200, 10_000);
    expect(up.status).toBe(200);
    expect(up.body).toEqual({ status: 'ready', checks: { postgres: 'ok', redis: 'ok', queues: 'ok' } });
    expect(web.pid).toBe(pid);
    expect(web.exitCode).toBeNull();
    expect(web.signalCode).toBeNull();
  });
});

describe('readiness while draining', () => {
  afterAll(() => closeSequelize());

  it('answers 503 draining though every dependency answers', async () => {
    const queues = createQueues();
    try {
      let draining = false;
      const routes = healthRoutes(queues, () => draining);
      await Promise.all([waitForReady(queues.connection), sequelize().query('SELECT 1')]);
      expect((await routes.request('/ready')).status).toBe(200);
      draining = true;
      const res = await routes.request('/ready');
      expect(res.status).toBe(503);
      expect(await res.json()).toEqual({ status: 'draining', checks: { postgres: 'ok', redis: 'ok', queues: 'ok' } });
    } finally {
      await queues.close();
    }
  });
});
