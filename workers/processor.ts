// Turns an issue batch job into one use-case call per request, each with its own trace id on its log lines.
import type { Job } from 'bullmq';
import { reason } from '../core/errors';
import type { Logger } from '../core/logger';
import { mapLimit } from '../core/concurrency';
import { issueBatchSchema, type CouponView, type JobOutcome } from '../queues/jobs';
import type { AdmissionDeps } from './admission/admission';
import { issueCoupon, type Attempt } from './issue-coupon';
import { jobData } from './job-data';

export interface BatchOutcome {
  results: JobOutcome<CouponView>[];
}

export type Processor = (job: Job) => Promise<BatchOutcome>;

/** Requests of one batch handled at once: enough to overlap round trips, few enough for the Postgres pool. */
const BATCH_PARALLELISM = 16;

function attemptOf(job: Job): Attempt {
  return { rerun: job.attemptsStarted > 1, last: job.attemptsMade + 1 >= (job.opts.attempts ?? 1) };
}

export function createIssueProcessor(deps: AdmissionDeps, log: Logger): Processor {
  return async (job) => {
    const { requests } = jobData(job, issueBatchSchema);
    const attempt = attemptOf(job);
    const settled = await mapLimit(requests, BATCH_PARALLELISM, (request) => {
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
