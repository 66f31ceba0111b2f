// Finished checkout jobs, pushed: a worker publishes the checkout queue's jobs (reserve, cancel,
// confirm) as they finish, one message per event-loop turn on one channel per deployment, and each
// web process resolves the requests it holds for them (src/web/outcome-hub.ts). A message carries
// what a job view is built from, so a waited reserve is answered without reading its job, and no
// web process follows the queue's event stream (a read per job event, every event of every job).
import { z } from 'zod';
import type { Redis } from 'ioredis';
import type { Logger } from '../core/logger';
import { writePerTurn, writesBehind } from '../core/concurrency';
import { redisKeys } from '../core/redis-keys';

/** What a job view is built from (src/web/routes/jobs.ts): a BullMQ Job has these fields. */
export interface JobRecord {
  name: string;
  timestamp: number;
  data: unknown;
  finishedOn?: number;
  /** The processor's result; absent (or null) for a job that failed for good. */
  returnvalue?: unknown;
}

/** One finished job as published: its id and record. */
export const finishedJobSchema = z.object({
  id: z.string(),
  name: z.string(),
  timestamp: z.number(),
  /** The user the job is for (the view's owner). */
  userId: z.string(),
  finishedOn: z.number(),
  returnvalue: z.unknown().optional(),
});
export type FinishedJob = z.infer<typeof finishedJobSchema>;

export const finishedMessageSchema = z.object({ jobs: z.array(finishedJobSchema) });

/** The record of a finished job for its view. */
export const recordOf = (job: FinishedJob): JobRecord => ({
  name: job.name,
  timestamp: job.timestamp,
  data: { userId: job.userId },
  finishedOn: job.finishedOn,
  returnvalue: job.returnvalue,
});

/** What the publisher needs of a BullMQ job. */
interface FinishedBullJob {
  id?: string;
  name: string;
  timestamp: number;
  data: unknown;
  finishedOn?: number;
}

export interface FinishedPublisher {
  /** A job that finished: completed with `result`, or failed for good (no result). */
  finished(job: FinishedBullJob, result?: unknown): void;
  /** Resolves once everything noted so far was published (or failed to be). */
  flushed(): Promise<void>;
}

/**
 * Collects the jobs that finish in one turn of the event loop and publishes them in one message
 * (src/core/concurrency.ts writePerTurn). A lost message costs nothing but time: a waiting request
 * reads its job when the push does not come.
 */
export function createFinishedPublisher(redis: Redis, log: Logger): FinishedPublisher {
  const writes = writesBehind();
  const publish = writePerTurn((jobs: FinishedJob[]) => redis.publish(redisKeys().checkoutFinishedChannel(), JSON.stringify({ jobs })));
  return {
    finished(job, result) {
      if (!job.id) return;
      const done = publish({
        id: job.id,
        name: job.name,
        timestamp: job.timestamp,
        userId: String((job.data as { userId?: unknown }).userId ?? ''),
        finishedOn: job.finishedOn ?? Date.now(),
        ...(result !== undefined && result !== null && { returnvalue: result }),
      }).catch((error: unknown) => log.warn({ err: error, jobId: job.id }, 'publishing finished jobs failed; their clients read them'));
      writes.add(done);
    },
    flushed: () => writes.flushed(),
  };
}
