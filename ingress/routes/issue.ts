// POST /coupons/issue: validates, enqueues and answers 202 with the job to poll.
import { Hono } from 'hono';
import { z } from 'zod';
import { AppError } from '../../core/errors';
import type { Queues } from '../../queues/connection';
import { createIssueBatcher } from '../../queues/enqueue';
import { idSchema } from '../../queues/jobs';
import type { AppEnv } from '../context';
import { jsonBody } from '../validation';
import { accepted } from './jobs';

const issueBody = z
  .object({
    policyId: idSchema,
    // Only an admin may issue on a user's behalf.
    userId: idSchema.optional(),
  })
  .strict();

export function issueRoutes(queues: Queues) {
  const app = new Hono<AppEnv>();
  const enqueueIssue = createIssueBatcher(queues);

  app.post('/', async (c) => {
    const body = await jsonBody(c, issueBody);
    const user = c.get('user');
    if (body.userId !== undefined && body.userId !== user.id && user.role !== 'admin') {
      throw new AppError('FORBIDDEN', 'Only an admin may issue a coupon to another user.');
    }
    const jobId = await enqueueIssue({
      policyId: body.policyId,
      userId: body.userId ?? user.id,
      actorId: user.id,
      traceId: c.get('traceId'),
      requestedAt: new Date().toISOString(),
    });
    c.get('log').info({ jobId, policyId: body.policyId }, 'issue enqueued');
    return accepted(c, jobId);
  });

  return app;
}
