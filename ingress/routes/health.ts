// Liveness and readiness: ready only when Postgres, Redis and the queues answer, and not while draining.
import { Hono } from 'hono';
import type { Queues } from '../../queues/connection';
import { QUEUES } from '../../queues/names';
import { sequelize } from '../../core/postgres';

const CHECK_TIMEOUT_MS = 1_500;

function within<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export function healthRoutes(queues: Queues, isDraining: () => boolean) {
  const app = new Hono();

  app.get('/live', (c) => c.json({ status: 'ok' }));

  app.get('/ready', async (c) => {
    const checks = {
      postgres: within(sequelize().query('SELECT 1'), CHECK_TIMEOUT_MS),
      redis: within(queues.connection.ping(), CHECK_TIMEOUT_MS),
      queues: within(queues.get(QUEUES.issue).getJobCountByTypes('waiting'), CHECK_TIMEOUT_MS),
    };
    const results = await Promise.allSettled(Object.values(checks));
    const report = Object.fromEntries(
      Object.keys(checks).map((name, i) => [name, results[i]?.status === 'fulfilled' ? 'ok' : 'down']),
    );
    const ready = !isDraining() && results.every((r) => r.status === 'fulfilled');
    return c.json({ status: ready ? 'ready' : isDraining() ? 'draining' : 'unavailable', checks: report }, ready ? 200 : 503);
  });

  return app;
}
