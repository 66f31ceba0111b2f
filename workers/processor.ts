// Turns a BullMQ job into calls of its use case, with each request's trace id on its log lines.
import { UnrecoverableError, type Job } from 'bullmq';
import { reason } from '../core/errors';
import type { Logger } from '../core/logger';
import { issueBatchSchema, issueJobSchema, type CouponView, type JobOutcome } from '../queues/jobs';
import type { AdmissionDeps } from './admission/admission';
import { issueCoupon, type Attempt } from './issue-coupon';

export interface BatchOutcome {
  results: JobOutcome<CouponView>[];
}

export type Processor = (job: Job) => Promise<JobOutcome<unknown> | BatchOutcome>;

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
  const single = async (job: Job) => {
    const parsed = issueJobSchema.safeParse(job.data);
    if (!parsed.success) malformed(job, parsed.error.issues[0]?.message);
    const jobLog = log.child({ traceId: parsed.data.traceId, jobId: job.id, attempt: job.attemptsMade + 1 });
    try {
      return await issueCoupon(deps, { ...parsed.data, requestId: job.id as string }, attemptOf(job), jobLog);
    } catch (error) {
      jobLog.warn({ err: error }, 'job attempt failed');
      throw error;
    }
  };

  const batch = async (job: Job): Promise<BatchOutcome> => {
    const parsed = issueBatchSchema.safeParse(job.data);
    if (!parsed.success) malformed(job, parsed.error.issues[0]?.message);
    const attempt = attemptOf(job);
    const requests = parsed.data.requests;
    const settled: PromiseSettledResult<JobOutcome<CouponView>>[] = new Array(requests.length);
    let next = 0;
    const lane = async () => {
      while (next < requests.length) {
        const index = next;
        next += 1;
        const request = requests[index] as (typeof requests)[number];
        const requestLog = log.child({ traceId: request.traceId, jobId: request.requestId, attempt: job.attemptsMade + 1 });
        settled[index] = await issueCoupon(deps, request, attempt, requestLog).then(
          (value) => ({ status: 'fulfilled', value }) as const,
          (reason: unknown) => {
            requestLog.warn({ err: reason }, 'request failed in this attempt');
            return { status: 'rejected', reason } as const;
          },
        );
      }
    };
    await Promise.all(Array.from({ length: Math.min(BATCH_PARALLELISM, requests.length) }, lane));
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

  return (job) => (job.name === 'issue-batch' ? batch(job) : single(job));
}
