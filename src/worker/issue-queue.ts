// The issue queue's jobs: batches of API issue requests, direct grants, user events and code
// generation. Each issuing job turns into one issueCoupon call per request, each request with its
// own id (`<jobId>.<part>`), so a rerun finds what an earlier run of the same request wrote.
import { UnrecoverableError, type Job } from 'bullmq';
import { mapLimit } from '../core/concurrency';
import { reason } from '../core/errors';
import type { Logger } from '../core/logger';
import type { IssueMethod } from '../domain/policy-rules';
import { markInboxApplied } from '../storage/inbox';
import { policyCache } from '../storage/cache/policy-cache';
import { directIssueJobSchema, issueBatchSchema, userEventJobSchema, type CouponView, type JobOutcome } from '../queues/jobs';
import { parseRequestId, requestIdOf, type JobKind } from '../queues/names';
import { publishOutcomes, readFinalOutcomes, type StoredOutcome } from '../queues/outcomes';
import {
  type DirectIssueResult,
  type DirectIssueReturn,
  type GrantResult,
  type IssueBatchReturn,
  type IssueOutcome,
  type UserEventReturn,
} from '../queues/results';
import { generateCodesJob } from '../usecases/generate-codes';
import { ISSUE_BY_POLICY_METHODS, issueCoupon, type Attempt, type IssueCouponDeps, type IssueRequest } from '../usecases/issue-coupon';
import { jobData } from '../queues/job-data';
import { failpoint } from '../core/failpoints';

export interface IssueDeps extends IssueCouponDeps {
  /** Key of the code hashes (CODE_HMAC_SECRET); only code generation needs it. */
  codeSecret?: string;
}

/** Requests of one job handled at once: enough to overlap round trips, few enough for the Postgres pool. */
const PARALLELISM = 16;
/** A direct grant reports progress after every this many users. */
const GRANT_CHUNK = 100;

function attemptOf(job: Job): Attempt {
  return { rerun: job.attemptsStarted > 1, last: job.attemptsMade + 1 >= (job.opts.attempts ?? 1) };
}

const METHODS_BY_WAY: Record<'policy' | 'shared-code' | 'single-code', readonly IssueMethod[]> = {
  policy: ISSUE_BY_POLICY_METHODS,
  'shared-code': ['CODE'],
  'single-code': ['CODE'],
};

export function createIssueProcessor(deps: IssueDeps, log: Logger) {
  const handlers: Partial<Record<JobKind, (job: Job) => Promise<unknown>>> = {
    'issue-batch': (job) => issueBatch(deps, job, log),
    'direct-issue': (job) => directIssue(deps, job, log),
    'user-event': (job) => userEvent(deps, job, log),
    'generate-codes': (job) => {
      if (!deps.codeSecret) throw new UnrecoverableError('this worker has no CODE_HMAC_SECRET to hash codes with');
      return generateCodesJob({ db: deps.db, redis: deps.redis, codeSecret: deps.codeSecret }, job, log);
    },
  };
  return async (job: Job): Promise<unknown> => {
    const handler = handlers[job.name as JobKind];
    if (!handler) throw new UnrecoverableError(`no handler for ${job.name} jobs on the issue queue`);
    return handler(job);
  };
}

/**
 * Runs the requests of one job. While attempts remain, any request's system fault fails the whole
 * job, so it is retried: the requests that succeeded find their coupons and answer the same. On
 * the last attempt, only the requests that failed say so.
 */
async function issueAll(
  deps: IssueDeps,
  job: Job,
  requests: (IssueRequest & { traceId?: string })[],
  log: Logger,
  attempt = attemptOf(job),
): Promise<JobOutcome<CouponView>[]> {
  const settled = await mapLimit(requests, PARALLELISM, (request) => {
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
  if (failure && !attempt.last) throw failure.reason;
  return settled.map((r) =>
    r.status === 'fulfilled' ? r.value : { outcome: 'failed' as const, reason: reason('INTERNAL', 'The request failed after retries.') },
  );
}

async function issueBatch(deps: IssueDeps, job: Job, log: Logger): Promise<IssueBatchReturn> {
  const { requests } = jobData(job, issueBatchSchema);
  // A rerun (the worker died after telling the outcomes, before completing the job) keeps what was
  // told: a shopper told SOLD_OUT is not issued a unit that came back since.
  const told = attemptOf(job).rerun
    ? await readFinalOutcomes(
        deps.redis,
        String(job.id),
        requests.map((r) => r.requestId),
        log,
      )
    : [];
  const results: (IssueOutcome | undefined)[] = requests.map((r, i) =>
    // A code that names no policy: nothing to issue, and nothing to hold.
    r.policyId === null ? { outcome: 'rejected', reason: reason('CODE_NOT_FOUND') } : told[i] ? jobOutcomeOf(told[i]) : undefined,
  );
  const toIssue = requests.flatMap((r, i) =>
    r.policyId === null || results[i]
      ? []
      : [
          {
            i,
            request: {
              policyId: r.policyId,
              userId: r.userId,
              requestId: r.requestId,
              traceId: r.traceId,
              methods: METHODS_BY_WAY[r.via ?? 'policy'],
              ...(r.via === 'single-code' && r.codeHash && { codeHash: r.codeHash }),
              ...(r.admittedAs && { admittedAs: r.admittedAs }),
            },
          },
        ],
  );
  const issued = await issueAll(
    deps,
    job,
    toIssue.map((t) => t.request),
    log,
  );
  toIssue.forEach((t, k) => {
    results[t.i] = issued[k];
  });
  const final = results as IssueOutcome[];
  // Each request's outcome where its poll reads it, and pushed to the web processes holding waiters.
  // Before the job completes: a client told its outcome never finds the job view saying otherwise.
  const finishedAt = Date.now();
  // A worker that dies here has committed the batch's coupons and told nobody.
  await failpoint('issue.before-answer');
  await publishOutcomes(
    deps.redis,
    String(job.id),
    requests.flatMap((r, i) => {
      const index = parseRequestId(r.requestId).index;
      return index === null ? [] : [[index, storedOutcome(r, final[i]!, finishedAt)] as [number, StoredOutcome]];
    }),
  );
  return { results: final };
}

/** The outcome a stored record told, as a job result; none from a success without its coupon (issued again, it finds it). */
function jobOutcomeOf(o: StoredOutcome): IssueOutcome | undefined {
  if (o.s === 'succeeded') return o.r && { outcome: 'succeeded', result: o.r };
  const told = o.e ?? reason('INTERNAL', 'The request failed after retries.');
  return o.s === 'rejected' ? { outcome: 'rejected', reason: told } : { outcome: 'failed', reason: told };
}

function storedOutcome(r: { userId: string; requestedAt: string }, o: IssueOutcome, finishedAt: number): StoredOutcome {
  const base = { s: o.outcome, u: r.userId, c: Date.parse(r.requestedAt), f: finishedAt };
  return o.outcome === 'succeeded' ? { ...base, r: o.result } : { ...base, e: o.reason };
}

function grantResult(userId: string, outcome: IssueOutcome): GrantResult {
  if (outcome.outcome === 'succeeded') return { userId, outcome: 'issued', couponId: outcome.result.id };
  return { userId, outcome: outcome.outcome === 'rejected' ? 'rejected' : 'failed', reason: outcome.reason };
}

/** An admin's grant: one request per user (`<jobId>.<index>`), in chunks with progress between. */
async function directIssue(deps: IssueDeps, job: Job, log: Logger): Promise<DirectIssueReturn> {
  const data = jobData(job, directIssueJobSchema);
  const jobLog = log.child({ traceId: data.traceId, jobId: job.id, policyId: data.policyId });
  const attempt = attemptOf(job);
  const results: GrantResult[] = [];
  for (let start = 0; start < data.userIds.length; start += GRANT_CHUNK) {
    const chunk = data.userIds.slice(start, start + GRANT_CHUNK).map((userId, k) => ({
      policyId: data.policyId,
      userId,
      requestId: requestIdOf(String(job.id), start + k),
      traceId: data.traceId,
      methods: ['DIRECT'] as const,
    }));
    const outcomes = await issueAll(deps, job, chunk, jobLog, attempt);
    outcomes.forEach((o, k) => results.push(grantResult(chunk[k]!.userId, o)));
    await job.updateProgress({ done: results.length, total: data.userIds.length });
  }
  const summary = summarize(data.policyId, results);
  jobLog.info(
    { issued: summary.issued, rejected: summary.rejected, failed: summary.failed, rejectedBy: summary.rejectedBy },
    'direct grant finished',
  );
  return { outcome: 'succeeded', result: summary };
}

function summarize(policyId: string, results: GrantResult[]): DirectIssueResult {
  const rejectedBy: Record<string, number> = {};
  for (const r of results) if (r.outcome === 'rejected' && r.reason) rejectedBy[r.reason.code] = (rejectedBy[r.reason.code] ?? 0) + 1;
  return {
    policyId,
    requested: results.length,
    issued: results.filter((r) => r.outcome === 'issued').length,
    rejected: results.filter((r) => r.outcome === 'rejected').length,
    failed: results.filter((r) => r.outcome === 'failed').length,
    rejectedBy,
    results,
  };
}

/**
 * A user event issues one coupon of every ACTIVE EVENT policy it triggers. The request of each
 * (event, policy) pair has the id `<jobId>.<policyId>`, and the job id derives from the event id,
 * so however often the event is delivered (and even after its job was removed) the pair finds its
 * coupon by request id (unique in Postgres) instead of making another.
 */
async function userEvent(deps: IssueDeps, job: Job, log: Logger): Promise<UserEventReturn> {
  const { event, traceId, source } = jobData(job, userEventJobSchema);
  const jobLog = log.child({ traceId, jobId: job.id, eventId: event.eventId, kafka: source });
  // Policies created after the event occurred are not its to trigger: a late redelivery issues the same.
  const policyIds = await policyCache.eventPolicies(event.type, new Date(event.occurredAt));
  const requests = policyIds.map((policyId) => ({
    policyId,
    userId: event.userId,
    requestId: requestIdOf(String(job.id), policyId),
    traceId,
    methods: ['EVENT'] as const,
  }));
  // Always look for an earlier delivery's coupon first: a redelivered event must not issue again.
  const attempt = attemptOf(job);
  const outcomes = await issueAll(deps, job, requests, jobLog, { ...attempt, rerun: true });
  // Its offset is committed: a request that failed for good must leave the job in the failed set
  // (retried from there, by the same request ids), not complete it as if the event were done.
  const failed = outcomes.filter((o) => o.outcome === 'failed').length;
  if (failed > 0) throw new Error(`${failed} of the event's ${outcomes.length} requests failed for good`);
  // Every request is final: the event is applied, and the inbox no longer needs it (I11). Should the
  // worker die before the job completes, its rerun finds the coupons by request id.
  await markInboxApplied(deps.db, 'user-events', event.eventId);
  const policies = outcomes.map((o, k) => {
    const g = grantResult(event.userId, o);
    return {
      policyId: requests[k]!.policyId,
      outcome: g.outcome,
      ...(g.couponId && { couponId: g.couponId }),
      ...(g.reason && { reason: g.reason }),
    };
  });
  jobLog.info(
    { type: event.type, userId: event.userId, policies: policies.length, issued: policies.filter((p) => p.outcome === 'issued').length },
    'user event processed',
  );
  return { outcome: 'succeeded', result: { eventId: event.eventId, type: event.type, userId: event.userId, policies } };
}

/** One request's answer in a finished issue-queue job, whichever kind of job carried it. */
