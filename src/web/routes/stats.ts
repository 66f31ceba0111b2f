// Live statistics: one policy (admin), the whole service (admin), one user's coupons (self, admin).
// Answers come through a cache shared by the web processes (src/storage/cache/stats-cache.ts), so dashboards
// polling every second during a sale cost Postgres one computation per period.
import { Hono } from 'hono';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { config } from '../../core/config';
import { AppError } from '../../core/errors';
import { sequelize } from '../../core/postgres';
import { statsAnswers } from '../../core/redis-keys';
import { createStatsCache } from '../../storage/cache/stats-cache';
import { overallStats, policyStats, userStats } from '../../storage/stats';
import { idSchema } from '../../queues/jobs';
import type { AppEnv } from '../context';
import { assertSelfOrAdmin, requireAdmin } from '../middleware/auth';
import { parseWith, query } from '../validation';

export const overallStatsQuery = z.object({
  top: z.coerce.number().int().min(1).max(50).default(10),
  // The busiest policies by coupons issued in the last 5 minutes or the last hour.
  window: z.enum(['5m', '1h']).default('1h'),
});

/** Mounted at the API root: its paths sit under the policy and user routers' prefixes. */
export function statsRoutes(redis: Redis) {
  const app = new Hono<AppEnv>();
  const cfg = config();
  const cache = createStatsCache(redis, { prefix: cfg.QUEUE_PREFIX, freshMs: cfg.STATS_CACHE_MS });
  // Rejection counters are read only while Redis answers; the counts from Postgres never wait for it.
  const counters = () => (redis.status === 'ready' ? redis : null);

  app.get('/coupons/policies/:id/stats', requireAdmin, async (c) => {
    const id = parseWith(idSchema, c.req.param('id'));
    const stats = await cache.read(statsAnswers.policy(id), () => policyStats(sequelize(), counters(), id));
    if (!stats) throw new AppError('NOT_FOUND', 'No such coupon policy.');
    return c.json(stats);
  });

  app.get('/stats', requireAdmin, async (c) => {
    const q = query(c, overallStatsQuery);
    return c.json(await cache.read(statsAnswers.overall(q.window, q.top), () => overallStats(sequelize(), counters(), q)));
  });

  app.get('/coupons/users/:userId/stats', async (c) => {
    const userId = parseWith(idSchema, c.req.param('userId'));
    assertSelfOrAdmin(c.get('user'), userId);
    return c.json(await cache.read(statsAnswers.user(userId), () => userStats(sequelize(), userId)));
  });

  return app;
}
