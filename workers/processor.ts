// Turns a BullMQ job into a call of its use case, with the job's trace id on every log line.
import { UnrecoverableError, type Job } from 'bullmq';
import type { Logger } from '../core/logger';
import { issueJobSchema, type JobOutcome } from '../queues/jobs';
import type { AdmissionDeps } from './admission/admission';
import { issueCoupon } from './issue-coupon';

export type Processor = (job: Job) => Promise<JobOutcome<unknown>>;

export function createIssueProcessor(deps: AdmissionDeps, log: Logger): Processor {
  return async (job) => {
    const parsed = issueJobSchema.safeParse(job.data);
    if (!parsed.success) {
      // A payload no worker can read will never succeed: fail it now instead of retrying.
      throw new UnrecoverableError(`malformed ${job.name} job: ${parsed.error.issues[0]?.message ?? 'invalid'}`);
    }
    const jobLog = log.child({ traceId: parsed.data.traceId, jobId: job.id, queue: job.queueName, attempt: job.attemptsMade + 1 });
    const started = performance.now();
    try {
      const outcome = await issueCoupon(deps, job as Job<typeof parsed.data>, jobLog);
      jobLog.debug({ outcome: outcome.outcome, ms: Math.round(performance.now() - started) }, 'job done');
      return outcome;
    } catch (error) {
      jobLog.warn({ err: error, ms: Math.round(performance.now() - started) }, 'job attempt failed');
      throw error;
    }
  };
}
