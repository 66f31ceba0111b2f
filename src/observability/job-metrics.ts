// What the worker's jobs did, for /metrics and the JOB_FAILURES alert: every job attempt that ends,
// and every issue request a job answered (a batch job carries up to 128). Both from the BullMQ
// Worker's events, after the job's result is stored: an attempt that throws and is retried, or whose
// completion is refused (its lock was lost), answers nothing yet, so a request counts once.
import type { Job, Worker } from 'bullmq';
import { slidingWindowAlert } from '../core/alerts';
import type { Logger } from '../core/logger';
import { issueRequestsTotal, jobDuration, jobsTotal } from '../core/metrics';
import { JOB_KINDS, QUEUES } from '../queues/names';
import { issueAnswersOf, type IssueAnswer } from '../queues/results';

export const JOB_OUTCOMES = ['succeeded', 'rejected', 'failed', 'retried'] as const;
type JobMetricOutcome = (typeof JOB_OUTCOMES)[number];

let noteFailures: (count: number, fields?: Record<string, unknown>) => void = () => undefined;

/** Raises JOB_FAILURES when more than `threshold` jobs or issue requests fail for good within `windowMs`. */
export function watchJobFailures(log: Logger, threshold: number, windowMs: number): void {
  noteFailures = slidingWindowAlert({ log, alert: 'JOB_FAILURES', threshold, windowMs, level: 'error', msg: 'jobs failing' });
}

type RequestOutcome = Pick<IssueAnswer, 'outcome' | 'reason'>;

/** The answers to the requests an issue job carried, from its stored result. */
export function requestOutcomesOf(name: string, result: unknown): RequestOutcome[] {
  return issueAnswersOf({ name, data: null }, result);
}

/** Counts the answers of issue requests, by outcome and code. */
export function countIssueRequests(outcomes: readonly RequestOutcome[]): void {
  const counts = new Map<string, number>();
  for (const o of outcomes) {
    const key = `${o.outcome} ${o.outcome === 'succeeded' ? '' : (o.reason?.code ?? '')}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  let failed = 0;
  for (const [key, n] of counts) {
    const [outcome = '', reason = ''] = key.split(' ');
    issueRequestsTotal.inc({ outcome, reason }, n);
    if (outcome === 'failed') failed += n;
  }
  if (failed > 0) noteFailures(failed, { what: 'issue requests' });
}

/** A processor's `{outcome}` (src/queues/jobs.ts JobOutcome); a job that returns none succeeded. */
function outcomeOf(result: unknown): JobMetricOutcome {
  const outcome = (result as { outcome?: unknown } | null)?.outcome;
  return outcome === 'rejected' || outcome === 'failed' ? outcome : 'succeeded';
}

function observe(queue: string, job: Job, outcome: JobMetricOutcome): void {
  jobsTotal.inc({ queue, name: job.name, outcome });
  if (job.processedOn)
    jobDuration.observe({ queue, name: job.name }, Math.max(0, ((job.finishedOn ?? Date.now()) - job.processedOn) / 1000));
}

/**
 * A failed attempt that ends its job: finishedOn is set once the job is in the failed set (last
 * attempt, unrecoverable error or stalled too often); a job that will run again has none.
 */
export function failedForGood(job: Job): boolean {
  return Boolean(job.finishedOn) || job.attemptsMade >= (job.opts.attempts ?? 1);
}

/** Records every attempt of the worker's jobs; starts the series of its queue's job kinds at 0 so rate() sees the first one. */
export function instrumentWorker(worker: Worker): void {
  const queue = worker.name;
  for (const [name, kind] of Object.entries(JOB_KINDS)) {
    if (kind.queue === queue) for (const outcome of JOB_OUTCOMES) jobsTotal.inc({ queue, name, outcome }, 0);
  }
  worker.on('completed', (job, result) => {
    observe(queue, job, outcomeOf(result));
    if (queue === QUEUES.issue) countIssueRequests(requestOutcomesOf(job.name, result));
  });
  worker.on('failed', (job, error) => {
    if (!job) return;
    const final = failedForGood(job);
    observe(queue, job, final ? 'failed' : 'retried');
    if (final) noteFailures(1, { queue, name: job.name, jobId: job.id, err: error?.message });
  });
}
