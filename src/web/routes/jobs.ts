// GET /jobs/:jobId: what became of a request, with an optional long-poll until it settles.
import type { Job } from 'bullmq';
import { Hono, type Context } from 'hono';
import { z } from 'zod';
import { requireCodeSecret } from '../../core/config';
import { sequelize } from '../../core/postgres';
import { AppError } from '../../core/errors';
import { openCodes } from '../../domain/codes';
import { takeSealedCodes } from '../../storage/codes';
import type { Queues } from '../../queues/connection';
import { couponView, findCouponByRequest } from '../../storage/coupon';
import { Reservation, reservationResult } from '../../storage/reservation';
import type { Logger } from '../../core/logger';
import type { JobView } from '../../queues/jobs';
import { JOB_KINDS, parseRequestId, parseReserveJobId, QUEUES, queueOfJobId, type QueueName } from '../../queues/names';
import { recordOf, type FinishedJob, type JobRecord } from '../../queues/finished';
import { batchJobState, ORPHAN_ADMISSION_AGE_MS, readOutcome, viewOfOutcome, type StoredOutcome } from '../../queues/outcomes';
import { jobOutcomeSchemaOf } from '../../queues/results';
import type { AppEnv } from '../context';
import type { OutcomeHub } from '../outcome-hub';
import { assertSelfOrAdmin } from '../middleware/auth';
import { parseWith, query } from '../validation';

const MAX_WAIT_MS = 10_000;
export const jobIdParam = z.string().regex(/^[a-z]{2,4}_[A-Za-z0-9-]{1,100}(\.\d{1,4})?$/, 'not a job id');
export const waitQuery = z.object({ waitMs: z.coerce.number().int().min(0).max(MAX_WAIT_MS).default(0) });

export function accepted(c: Context<AppEnv>, jobId: string) {
  return c.json({ jobId, status: 'pending' as const, statusUrl: `/api/v1/jobs/${jobId}` }, 202);
}

type OwnedJobView = JobView & { ownerId: string };

/**
 * One HGETALL: a job is finished once it has finishedOn, which BullMQ writes in the same script as
 * its return value (completed) or final failure, so the state and the result always agree. An issue
 * batch is nobody's job: its requests are read one at a time from their outcome records.
 */
async function readJob(queues: Queues, queueName: QueueName, id: string, log: Logger): Promise<{ job: Job; view: OwnedJobView } | null> {
  const job = await queues.get(queueName).getJob(id);
  if (!job || job.name === 'issue-batch') return null;
  return { job, view: viewOf(job, id, log) };
}

/** A job's view from its record: a Job read from Redis, or a finished job a worker pushed (src/queues/finished.ts). */
function viewOf(job: JobRecord & { progress?: unknown }, id: string, log: Logger): OwnedJobView {
  const state = !job.finishedOn ? 'pending' : job.returnvalue !== null && job.returnvalue !== undefined ? 'completed' : 'failed';
  const base = {
    id,
    type: job.name,
    createdAt: new Date(job.timestamp).toISOString(),
    // The user a request is for; an admin's grant or code generation belongs to that admin (userId).
    ownerId: String((job.data as { userId?: unknown }).userId ?? ''),
  };
  const finishedAt = job.finishedOn ? new Date(job.finishedOn).toISOString() : undefined;
  if (state === 'completed') {
    const parsed = jobOutcomeSchemaOf(job.name).safeParse(job.returnvalue);
    if (parsed.success) {
      const outcome = parsed.data;
      const detail = outcome.outcome === 'succeeded' ? { result: outcome.result } : { reason: outcome.reason };
      return { ...base, status: outcome.outcome, ...detail, ...(finishedAt && { finishedAt }) };
    }
    log.warn({ jobId: id, issue: parsed.error.issues[0]?.message }, 'malformed job result; answered as failed');
  }
  if (state === 'completed' || state === 'failed') {
    // The internal cause stays in the logs; the client learns only that the system failed.
    return {
      ...base,
      status: 'failed',
      reason: { code: 'INTERNAL', message: 'The request failed after retries.' },
      ...(finishedAt && { finishedAt }),
    };
  }
  // Long jobs (a grant, code generation) say how far they got: {done, total}.
  const progress = typeof job.progress === 'object' ? { progress: job.progress } : {};
  return { ...base, status: 'pending', ...progress };
}

/**
 * A finished code generation lists its codes in the first read by its owner, and never again: the
 * read takes them out of Postgres (src/storage/codes.ts takeSealedCodes), so from then on they exist
 * nowhere but with that admin. Later reads say `codesDelivered: true` (or `codesExpired: true` for
 * codes nobody fetched within a day).
 */
async function withCodesOnce(view: JobView, ownerId: string, reader: string): Promise<JobView> {
  if (view.type !== 'generate-codes' || view.status !== 'succeeded') return view;
  // Only the admin who asked takes them: another admin reading the job must not empty it.
  if (reader !== ownerId) return view;
  const result = view.result as Record<string, unknown>;
  const delivery = await takeSealedCodes(sequelize(), view.id);
  if ('codes' in delivery) return { ...view, result: { ...result, codes: openCodes(requireCodeSecret(), view.id, delivery.codes) } };
  return { ...view, result: { ...result, ...('delivered' in delivery ? { codesDelivered: true } : { codesExpired: true }) } };
}

export function jobRoutes(queues: Queues, outcomes: OutcomeHub) {
  const app = new Hono<AppEnv>();

  app.get('/:jobId', async (c) => {
    const jobId = parseWith(jobIdParam, c.req.param('jobId'));
    const { waitMs } = query(c, waitQuery);
    const view = isIssueRequest(jobId)
      ? await issueRequestView(c, queues, outcomes, jobId, waitMs)
      : await settledView(c, queues, jobId, waitMs, { hub: outcomes });
    if (!view) throw new AppError('NOT_FOUND', 'No such job (results are kept for 24 hours).');
    return c.json(view);
  });

  return app;
}

/**
 * The caller's view of a job, after waiting up to waitMs for it to finish; null when there is no
 * such job. `added` is the job the request itself just queued: it is known to exist, so the wait
 * starts at once, without reading the job first.
 */
async function settledView(
  c: Context<AppEnv>,
  queues: Queues,
  jobId: string,
  waitMs: number,
  opts: SettleOptions = {},
): Promise<JobView | null> {
  const queueName = queueOfJobId(jobId);
  if (!queueName) return null;
  const log = c.get('log');
  // The checkout queue's jobs are pushed as they finish: the wait is registered before the job is
  // read (or, by the caller, before it was added), so a job finishing in between is heard.
  const pushes = queueName === QUEUES.checkout && opts.hub !== undefined && waitMs > 0;
  const pushed = opts.pushed ?? (pushes ? opts.hub?.waitJob(jobId, Math.min(waitMs, FIRST_READ_MS)) : undefined);
  const first = opts.added ? undefined : await readJob(queues, queueName, jobId, log);
  if (first === null) return reserveAnsweredByPostgres(c, jobId);
  if (first) assertSelfOrAdmin(c.get('user'), first.view.ownerId);
  let view = first?.view;
  const waitFor = opts.added ?? (view?.status === 'pending' ? first?.job : undefined);
  if (waitFor && waitMs > 0) {
    if (pushed && opts.hub) view = (await pushedView(queues, opts.hub, jobId, pushed, waitMs, log)) ?? view;
    else {
      // waitUntilFinished rejects when the job fails or the wait runs out; either way, read it then.
      await waitFor.waitUntilFinished(queues.events(queueName), waitMs).catch(() => undefined);
      view = (await readJob(queues, queueName, jobId, log))?.view ?? view;
    }
  }
  if (!view) return null;
  assertSelfOrAdmin(c.get('user'), view.ownerId);
  const { ownerId, ...body } = view;
  return withCodesOnce(body, ownerId, c.get('user').id);
}

interface SettleOptions {
  /** The job the request itself just queued: it exists, so the wait starts without reading it first. */
  added?: Job;
  /** Where the checkout queue's finished jobs are pushed; without it, the queue's event stream is followed. */
  hub?: OutcomeHub;
  /** The push wait the caller registered before adding the job (hub.waitJob for up to FIRST_READ_MS). */
  pushed?: Promise<FinishedJob | null>;
}

/**
 * A pushed job is read anyway when no push came this long after the wait began, and then every
 * READ_EVERY_MS: a push can be missed (the subscription reconnecting, a job that finished before the
 * request came), and a read is what the wait would have done without pushes.
 */
const FIRST_READ_MS = 200;
const READ_EVERY_MS = 1_000;

/**
 * For a request about to queue a checkout-queue job: with `Prefer: wait`, the wait for the job's push,
 * registered now, before the add, so that no finish can come before it (hand it to answerJob as
 * `pushed`); undefined without one.
 */
export function awaitPush(c: Context<AppEnv>, hub: OutcomeHub, jobId: string): Promise<FinishedJob | null> | undefined {
  const waitMs = preferredWaitMs(c);
  return waitMs ? hub.waitJob(jobId, Math.min(waitMs, FIRST_READ_MS)) : undefined;
}

/**
 * Waits up to waitMs for a checkout-queue job a worker pushes as finished: its view, from the push
 * (no read), or from a read where a push did not come in time; the last read's view (or undefined)
 * when the job is still pending at the end.
 */
export async function pushedView(
  queues: Queues,
  hub: OutcomeHub,
  jobId: string,
  firstWait: Promise<FinishedJob | null>,
  waitMs: number,
  log: Logger,
): Promise<OwnedJobView | undefined> {
  const deadline = Date.now() + waitMs;
  let wait = firstWait;
  for (;;) {
    const job = await wait;
    if (job) return viewOf(recordOf(job), jobId, log);
    const read = await readJob(queues, QUEUES.checkout, jobId, log);
    const left = deadline - Date.now();
    if (!read || read.view.status !== 'pending' || left <= 0) return read?.view;
    wait = hub.waitJob(jobId, Math.min(left, READ_EVERY_MS));
  }
}

/**
 * The answer of a reserve whose job Redis no longer keeps (checkout jobs are kept an hour, at most
 * 100,000: a day's worth at 1,000 a second would not fit): the reservation its job id names, from
 * Postgres, for as long as the reservation exists. A reserve that was refused left no reservation;
 * its answer lives as long as its job, and the same request sent again is decided again.
 */
async function reserveAnsweredByPostgres(c: Context<AppEnv>, jobId: string): Promise<JobView | null> {
  const named = parseReserveJobId(jobId);
  if (!named) return null;
  const reservation = await Reservation.findOne({ where: { requestId: named.requestId } });
  if (!reservation?.requestFingerprint?.startsWith(named.fingerprintPrefix)) return null;
  assertSelfOrAdmin(c.get('user'), reservation.userId);
  const at = reservation.createdAt.toISOString();
  return { id: jobId, type: 'reserve', status: 'succeeded', result: reservationResult(reservation), createdAt: at, finishedAt: at };
}

const PREFER_WAIT = /(?:^|[\s,;])wait\s*=\s*(\d{1,6})(?=$|[\s,;])/i;

/** The wait a client asked for with `Prefer: wait=N` (RFC 7240, N seconds, at most 10), in ms; null without one. */
export function preferredWaitMs(c: Context<AppEnv>): number | null {
  const wait = PREFER_WAIT.exec(c.req.header('prefer') ?? '');
  return wait ? Math.min(Number(wait[1]) * 1000, MAX_WAIT_MS) : null;
}

/** 200 with a finished job view, as the answer to a request sent with `Prefer: wait`. */
export function finishedAnswer(c: Context<AppEnv>, view: JobView, waitMs: number) {
  c.header('Preference-Applied', `wait=${waitMs / 1000}`);
  c.header('Content-Location', `/api/v1/jobs/${view.id}`);
  return c.json({ ...view, jobId: view.id, statusUrl: `/api/v1/jobs/${view.id}` }, 200);
}

/**
 * The answer to a request that made a job: 202 with the job to poll or, when the client sent
 * `Prefer: wait=N` (RFC 7240, N seconds, at most 10) and the job finished within that, 200 with the
 * finished job view and `Preference-Applied`: the result without a second request. Either way the
 * job is the same, and it stays readable at its statusUrl.
 */
export async function answerJob(c: Context<AppEnv>, queues: Queues, jobId: string, opts: SettleOptions = {}) {
  const waitMs = preferredWaitMs(c);
  if (waitMs === null) return accepted(c, jobId);
  // The job is queued: whatever goes wrong while waiting (Redis blinks), the answer stays a 202,
  // never a 503 that would tell the client to queue it again.
  const view = await settledView(c, queues, jobId, waitMs, opts).catch((error: unknown) => {
    c.get('log').warn({ err: error, jobId }, 'waiting for the job failed; answering 202');
    return null;
  });
  if (!view || view.status === 'pending') return accepted(c, jobId);
  return finishedAnswer(c, { ...view, id: jobId }, waitMs);
}

const isIssueRequest = (id: string) => id.startsWith(`${JOB_KINDS['issue-batch'].prefix}_`) && parseRequestId(id).index !== null;

/**
 * The view of one issue request: its own stored outcome (one HGET; the batch job, about 16 KB of
 * requests and results, is never read), waiting up to waitMs for the worker's push while it is
 * pending. Where the record cannot be the answer, Postgres is: no record (Redis lost it; the web
 * stores it before the job exists), or a record still pending once its batch ended without deciding
 * it (the job failed or stalled out as a whole, or is gone).
 */
export async function issueRequestView(
  c: Context<AppEnv>,
  queues: Queues,
  outcomes: OutcomeHub,
  requestId: string,
  waitMs: number,
): Promise<JobView | null> {
  let stored = await readOutcome(queues.connection, requestId, c.get('log'));
  if (!stored) return committedRequestView(c, requestId);
  assertSelfOrAdmin(c.get('user'), stored.u);
  if (stored.s === 'pending' && waitMs > 0) stored = await awaitOutcome(queues, outcomes, requestId, waitMs, c.get('log'));
  // A pending request whose batch ended without deciding it (the job failed or stalled out as a
  // whole, or is gone) never will be decided: it ends failed, unless Postgres holds its coupon (I7).
  const ended = stored.s === 'pending' ? await batchEnded(queues, requestId, stored) : null;
  if (ended) stored = await undecidedOutcome(queues, requestId, stored, ended, c.get('log'));
  const { ownerId: _owner, ...view } = viewOfOutcome(requestId, await withPostgresWord(requestId, stored));
  return view;
}

/**
 * A request Redis knows nothing of, neither its record nor its job (Redis lost its last second of
 * writes in a host crash), whose coupon Postgres holds: it succeeded, and its holder is told so
 * rather than 404. Without a coupon it stays unknown (404): it was never written, ask again.
 */
async function committedRequestView(c: Context<AppEnv>, requestId: string): Promise<JobView | null> {
  const coupon = await findCouponByRequest(requestId);
  if (!coupon) return null;
  assertSelfOrAdmin(c.get('user'), coupon.userId);
  return {
    id: requestId,
    type: 'issue',
    status: 'succeeded',
    result: couponView(coupon),
    createdAt: coupon.createdAt.toISOString(),
    finishedAt: coupon.createdAt.toISOString(),
  };
}

/**
 * A request stored as failed may still have written its coupon (its insert committed, the answer was
 * lost, and Postgres could not be asked on the last attempt): Postgres has the last word, so nobody
 * holding a coupon is told "failed".
 */
export async function withPostgresWord(requestId: string, stored: StoredOutcome): Promise<StoredOutcome> {
  if (stored.s !== 'failed') return stored;
  const coupon = await findCouponByRequest(requestId);
  return coupon ? { ...stored, s: 'succeeded', r: couponView(coupon), e: undefined } : stored;
}

/**
 * A request read as pending whose batch has since ended. The batch may have decided it between the
 * two reads: a worker stores a batch's outcomes before BullMQ marks the job finished, so the record
 * read again after the batch was seen finished is the last word. Read once, before the look at the
 * batch, a refused request whose batch finished in between was told "failed" (a CI run of the
 * worker-crash test). Still pending now, it ends failed (UNDECIDED).
 */
export async function undecidedOutcome(
  queues: Queues,
  requestId: string,
  readBefore: StoredOutcome,
  ended: keyof typeof UNDECIDED,
  log: Logger,
): Promise<StoredOutcome> {
  const now = (await readOutcome(queues.connection, requestId, log)) ?? readBefore;
  if (now.s !== 'pending') return now;
  return { ...now, s: 'failed', e: { code: 'INTERNAL', message: UNDECIDED[ended] } };
}

/** What a request its batch never decided is told, by what became of the batch (batchEnded). */
const UNDECIDED = {
  finished: 'The request failed after retries.',
  gone: 'The request was lost before a worker took it; ask again.',
} as const;

/** Waits for a pending request's outcome: the push, or what is stored when the wait ends. */
export async function awaitOutcome(
  queues: Queues,
  outcomes: OutcomeHub,
  requestId: string,
  waitMs: number,
  log?: Logger,
): Promise<StoredOutcome> {
  const pushed = outcomes.wait(requestId, waitMs);
  // Registered first, then read: an outcome published between the two reads is not missed.
  const now = await readOutcome(queues.connection, requestId, log);
  if (now && now.s !== 'pending') return now;
  const outcome = await pushed;
  if (outcome) return outcome;
  const last = await readOutcome(queues.connection, requestId, log);
  if (!last) throw new Error(`the outcome of ${requestId} vanished while waiting`);
  return last;
}

/**
 * Whether the batch job of a request finished, or is gone: then a pending record will never change.
 * A job not there yet is gone only once its record is older than the orphan age: the web stores the
 * record a moment before it adds the job. One HMGET of the job's state fields, not the job.
 */
async function batchEnded(queues: Queues, requestId: string, stored: StoredOutcome): Promise<keyof typeof UNDECIDED | null> {
  const state = await batchJobState(queues, requestId);
  if (state === 'finished') return 'finished';
  return state === 'absent' && Date.now() - stored.c >= ORPHAN_ADMISSION_AGE_MS ? 'gone' : null;
}
