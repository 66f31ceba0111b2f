// Liveness and readiness: ready only when Postgres, Redis and the queues answer, and not while draining.
// The same readiness rules as the worker's and bridge's ops servers (src/core/ops-server.ts).
import { Hono } from 'hono';
import { readiness } from '../../core/ops-server';
import { sequelize } from '../../core/postgres';
import type { Queues } from '../../queues/connection';
import { QUEUES } from '../../queues/names';

/** `ready: false` leaves /ready out: with OPS_PORT set it is served on the ops port only, since it queries Postgres. */
export function healthRoutes(queues: Queues, isDraining: () => boolean, opts: { ready?: boolean } = {}) {
  const app = new Hono();

  app.get('/live', (c) => c.json({ status: 'ok' }));
  if (opts.ready === false) return app;

  app.get('/ready', async (c) => {
    const report = await readiness(
      {
        postgres: () => sequelize().query('SELECT 1'),
        redis: () => queues.connection.ping(),
        queues: () => queues.get(QUEUES.issue).getJobCountByTypes('waiting'),
      },
      () => (isDraining() ? 'draining' : 'running'),
    );
    return c.json(report, report.status === 'ready' ? 200 : 503);
  });

  return app;
}
