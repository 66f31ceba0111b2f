// Issue rejections counted per policy and reason in Redis, for the stats routes (src/storage/stats.ts):
// a refusal is a job result, not a row, so Postgres cannot count it.
//
// Counted from the worker's `completed` event, that is once BullMQ has stored the job's final result:
// a job attempt that throws (and is retried) or whose completion is refused (lock lost, the job runs
// again elsewhere) counts nothing, and a completed job never runs again, so each request counts at
// most once however often its job ran. The price: rejections of a job whose worker dies between
// completing it and the next turn of its event loop are not counted (a drain flushes them).
//
// A sale refuses thousands of requests a second: the counts of one event-loop turn go to Redis as
// one pipeline of HINCRBYs, one per (policy, reason) that occurred in it.
import type { Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { writePerTurn, writesBehind } from '../core/concurrency';
import type { Logger } from '../core/logger';
import { redisKeys } from '../core/redis-keys';
import { issueAnswersOf } from '../queues/results';

export interface Rejection {
  /** Null when the request named no policy (a code that names none). */
  policyId: string | null;
  code: string;
}

/** The rejected requests in a finished issue-queue job's result. */
export function rejectionsOf(job: Pick<Job, 'name' | 'data'>, result: unknown): Rejection[] {
  return issueAnswersOf(job, result).flatMap((a) =>
    a.outcome === 'rejected' && typeof a.reason?.code === 'string' ? [{ policyId: a.policyId, code: a.reason.code }] : [],
  );
}

export interface RejectionCounter {
  /** Counts the rejections in a completed job's result (fire and forget). */
  countJob(job: Job, result: unknown): void;
  /** Counts refusals decided outside a job (the web's admission of a sale's requests), fire and forget. */
  count(rejections: Rejection[]): void;
  /** Resolves once every count handed in so far has reached Redis (or failed): call before disconnecting. */
  flushed(): Promise<void>;
}

export function createRejectionCounter(redis: Redis, log: Logger): RejectionCounter {
  const writes = writesBehind();
  const write = writePerTurn(async (batches: Rejection[][]) => {
    const perKey = new Map<string, Map<string, number>>();
    const bump = (key: string, code: string, n: number) => {
      const codes = perKey.get(key) ?? new Map<string, number>();
      codes.set(code, (codes.get(code) ?? 0) + n);
      perKey.set(key, codes);
    };
    for (const { policyId, code } of batches.flat()) {
      bump(redisKeys().allRejections(), code, 1);
      // A policy id that names nothing comes from the client: keying counters by it would let
      // anyone create Redis keys at will.
      if (policyId !== null && code !== 'POLICY_NOT_FOUND') bump(redisKeys().policyRejections(policyId), code, 1);
    }
    const pipeline = redis.pipeline();
    for (const [key, codes] of perKey) for (const [code, n] of codes) pipeline.hincrby(key, code, n);
    const replies = await pipeline.exec();
    const failed = replies?.find(([error]) => error)?.[0];
    if (failed) throw failed;
  });
  const count = (rejections: Rejection[], jobId?: string) => {
    if (rejections.length === 0) return;
    const done = write(rejections).catch((error: unknown) => {
      log.warn({ err: error, jobId, rejections: rejections.length }, 'issue rejections not counted in the stats');
    });
    writes.add(done);
  };
  return {
    countJob(job, result) {
      count(rejectionsOf(job, result), job.id);
    },
    count,
    flushed: () => writes.flushed(),
  };
}
