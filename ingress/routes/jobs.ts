// GET /jobs/:jobId: what became of a request, with an optional long-poll until it settles.
import type { Job } from 'bullmq';
import { Hono, type Context } from 'hono';
import { z } from 'zod';
import { AppError } from '../../core/errors';
import type { Queues } from '../../queues/connection';
import { jobOutcomeSchema, type JobView } from '../../queues/jobs';
import { queueOfJobId, type QueueName } from '../../queues/names';
import type { AppEnv } from '../context';
import { assertSelfOrAdmin } from '../middleware/auth';
import { parseWith, query } from '../validation';

const MAX_WAIT_MS = 10_000;
const jobIdParam = z.string().regex(/^[a-z]{2,4}_[A-Za-z0-9-]{1,100}$/, 'not a job id');
const waitQuery = z.object({ waitMs: z.coerce.number().int().min(0).max(MAX_WAIT_MS).default(0) });

export function accepted(c: Context<AppEnv>, jobId: string) {
  return c.json({ jobId, status: 'pending' as const, statusUrl: `/api/v1/jobs/${jobId}` }, 202);
}

async function viewOf(job: Job): Promise<JobView> {
  const base = { id: job.id as string, type: job.name, createdAt: new Date(job.timestamp).toISOString() };
  const state = await job.getState();
  const finishedAt = job.finishedOn ? new Date(job.finishedOn).toISOString() : undefined;
  if (state === 'completed') {
    const outcome = jobOutcomeSchema.safeParse(job.returnvalue);
    if (outcome.success && outcome.data.outcome === 'succeeded') {
      return { ...base, status: 'succeeded', result: outcome.data.result, ...(finishedAt && { finishedAt }) };
    }
    if (outcome.success && outcome.data.outcome === 'rejected') {
      return { ...base, status: 'rejected', reason: outcome.data.reason, ...(finishedAt && { finishedAt }) };
    }
  }
  if (state === 'completed' || state === 'failed') {
    // The internal cause stays in the logs; the client learns only that the system failed.
    return { ...base, status: 'failed', reason: { code: 'INTERNAL', message: 'The request failed after retries.' }, ...(finishedAt && { finishedAt }) };
  }
  return { ...base, status: 'pending' };
}

export function jobRoutes(queues: Queues) {
  const app = new Hono<AppEnv>();

  app.get('/:jobId', async (c) => {
    const jobId = parseWith(jobIdParam, c.req.param('jobId'));
    const { waitMs } = query(c, waitQuery);
    const queueName = queueOfJobId(jobId);
    const job = queueName ? await queues.get(queueName).getJob(jobId) : undefined;
    if (!job || !queueName) throw new AppError('NOT_FOUND', 'No such job (results are kept for 24 hours).');
    assertSelfOrAdmin(c.get('user'), String((job.data as { userId?: unknown }).userId ?? ''));
    let view = await viewOf(job);
    if (view.status === 'pending' && waitMs > 0) {
      view = await waitForJob(queues, queueName, job, waitMs);
    }
    return c.json(view);
  });

  return app;
}

async function waitForJob(queues: Queues, queueName: QueueName, job: Job, waitMs: number): Promise<JobView> {
  // waitUntilFinished rejects when the job fails or the wait runs out; either way, read the state again.
  await job.waitUntilFinished(queues.events(queueName), waitMs).catch(() => undefined);
  const fresh = await queues.get(queueName).getJob(job.id as string);
  return viewOf(fresh ?? job);
}
