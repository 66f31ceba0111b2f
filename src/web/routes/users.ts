// GET /coupons/users/:userId: a user's coupons, newest first, filtered by status, cursor-paged.
import { Hono } from 'hono';
import { z } from 'zod';
import { AppError } from '../../core/errors';
import { listUserCoupons } from '../../storage/coupon';
import { decodeCursor } from '../../storage/cursor';
import { idSchema } from '../../queues/jobs';
import type { AppEnv } from '../context';
import { assertSelfOrAdmin } from '../middleware/auth';
import { parseWith, query } from '../validation';

export const listQuery = z.object({
  status: z.enum(['AVAILABLE', 'RESERVED', 'USED', 'EXPIRED']).optional(),
  limit: z.coerce.number().int().min(1).max(100).default(20),
  cursor: z.string().max(512).optional(),
});

export function userRoutes() {
  const app = new Hono<AppEnv>();

  app.get('/:userId', async (c) => {
    const userId = parseWith(idSchema, c.req.param('userId'));
    assertSelfOrAdmin(c.get('user'), userId);
    const q = query(c, listQuery);
    const cursor = q.cursor === undefined ? undefined : decodeCursor(q.cursor);
    if (cursor === null) throw new AppError('VALIDATION_FAILED', 'The cursor is not valid.');
    return c.json(await listUserCoupons({ userId, status: q.status, limit: q.limit, cursor }));
  });

  return app;
}
