// Turns an issue batch job into one use-case call per request, each with its own trace id on its log lines.
import { UnrecoverableError, type Job } from 'bullmq';
import { reason } from '../core/errors';
import type { Logger } from '../core/logger';
import { mapLimit } from '../core/concurrency';
import { issueBatchSchema, type CouponView, type JobOutcome } from '../queues/jobs';
import type { AdmissionDeps } from './admission/admission';
import { issueCoupon, type Attempt } from './issue-coupon';

export interface BatchOutcome {
  results: JobOutcome<CouponView>[];
}

export type Processor = (job: Job) => Promise<BatchOutcome>;

/** Requests of one batch handled at once: enough to overlap round trips, few enough for the Postgres pool. */
const BATCH_PARALLELISM = 16;

function attemptOf(job: Job): Attempt {
  return { rerun: job.attemptsStarted > 1, last: job.attemptsMade + 1 >= (job.opts.attempts ?? 1) };
}

function malformed(job: Job, message: string | undefined): never {
  // A payload no worker can read will never succeed: fail it now instead of retrying.
  throw new UnrecoverableError(`malformed ${job.name} job: ${message ?? 'invalid'}`);
}

export function createIssueProcessor(deps: AdmissionDeps, log: Logger): Processor {
  return async (job) => {
    const parsed = issueBatchSchema.safeParse(job.data);
    if (!parsed.success) malformed(job, parsed.error.issues[0]?.message);
    const attempt = attemptOf(job);
    const settled = await mapLimit(parsed.data.requests, BATCH_PARALLELISM, (request) => {
      const requestLog = log.child({ traceId: request.traceId, jobId: request.requestId, attempt: job.attemptsMade + 1 });
      return issueCoupon(deps, request, attempt, requestLog).then(
        (value): PromiseSettledResult<JobOutcome<CouponView>> => ({ status: 'fulfilled', value }),
        (error: unknown): PromiseSettledResult<JobOutcome<CouponView>> => {
          requestLog.warn({ err: error }, 'request failed in this attempt');
          return { status: 'rejected', reason: error };
        },
      );
    });
    const failure = settled.find((r) => r.status === 'rejected');
    // Retry the whole batch while attempts remain: the requests that already succeeded find their
    // coupons and answer the same. On the last attempt, only the requests that failed say so.
    if (failure && !attempt.last) throw failure.reason;
    return {
      results: settled.map((r) =>
        r.status === 'fulfilled' ? r.value : { outcome: 'failed' as const, reason: reason('INTERNAL', 'The request failed after retries.') },
      ),
    };
  };
}
