// Enqueue helpers: a job is in Redis before the client hears 202, or the client hears 503 (I7, I9).
import type { Job, JobsOptions } from 'bullmq';
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

/**
 * Adds jobs with ids of their own (derived from Kafka events), one addBulk per queue, each queue's
 * jobs in the order given. An id that exists already keeps its job: adding an event's job again,
 * from a redelivery or a redrive of the inbox, is a no-op while the job is in Redis.
 */
/** A job to add: its kind (which names its queue), its id and its data. */
export type NewJob = { kind: JobKind; id: string; data: object };

export async function addJobs(queues: Queues, jobs: NewJob[]): Promise<void> {
  const byQueue = new Map<(typeof JOB_KINDS)[JobKind]['queue'], { name: string; data: object; opts: JobsOptions }[]>();
  for (const job of jobs) {
    const queue = JOB_KINDS[job.kind].queue;
    const list = byQueue.get(queue) ?? [];
    list.push({ name: job.kind, data: job.data, opts: { ...KIND_OPTIONS[job.kind], jobId: job.id } });
    byQueue.set(queue, list);
  }
  await Promise.all([...byQueue].map(([queue, list]) => queues.get(queue).addBulk(list)));
}
