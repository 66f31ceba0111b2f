// Enqueue helpers: a job is in Redis before the client hears 202, or the client hears 503 (I7, I9).
import type { Job } from 'bullmq';
import { AppError } from '../core/errors';
import { KIND_OPTIONS, type Queues } from './connection';
import { JOB_KINDS, type JobKind } from './names';

/**
 * Adds a job; any failure is a 503. There is deliberately no timer of our own: a 503 must mean
 * "not queued", and a timer cannot cancel an add already sent. The producer connection has no
 * offline queue and no resend, so an add fails at once when Redis is away or the link drops.
 * With an id that exists already, BullMQ keeps the existing job and the add is a no-op: that is
 * how derived ids (derivedJobId) collapse retries into one job.
 */
/** The 503 of a request that could not be queued (I9): the client may send it again. */
export function notQueued(cause?: unknown): AppError {
  return new AppError('UNAVAILABLE', 'The request could not be queued; retry later.', undefined, cause);
}

export async function addJob(queues: Queues, kind: JobKind, data: object, jobId: string): Promise<Job> {
  try {
    return await queues.get(JOB_KINDS[kind].queue).add(kind, data, { ...KIND_OPTIONS[kind], jobId });
  } catch (error) {
    throw notQueued(error);
  }
}
