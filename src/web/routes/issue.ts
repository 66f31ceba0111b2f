// POST /coupons/issue: by policy id, or by a code (a CODE policy's shared code or a single-use code).
// Validates, resolves a code to its policy and hands the request to the intake (src/web/issue-intake.ts),
// which decides it in Redis or queues it; answers 202 with the request to poll or, with
// `Prefer: wait`, 200 with the outcome: one round trip to know win or lose.
import { Hono, type Context } from 'hono';
import { z } from 'zod';
import { AppError } from '../../core/errors';
import { sequelize } from '../../core/postgres';
import { codeHash, normalizeCode, redeemCodeSchema } from '../../domain/codes';
import { policyOfCode } from '../../storage/codes';
import { policyCache } from '../../storage/cache/policy-cache';
import type { Queues } from '../../queues/connection';
import { idSchema, type IssueJob } from '../../queues/jobs';
import type { AppEnv } from '../context';
import { logWith } from '../middleware/trace';
import { jsonBody } from '../validation';
import type { Logger } from '../../core/logger';
import { issueIdempotencyRecordKey } from '../../queues/names';
import { readOutcome, viewOfOutcome, type StoredOutcome } from '../../queues/outcomes';
import { createIssueIntake, type IntakeAnswer } from '../issue-intake';
import type { OutcomeHub } from '../outcome-hub';
import type { RejectionCounter } from '../../observability/rejection-stats';
import { accepted, finishedAnswer, issueRequestView, preferredWaitMs, withPostgresWord } from './jobs';
import { fingerprint, idempotencyKeySchema } from '../idempotency';
import { parseWith } from '../validation';

export const issueBody = z
  .object({
    policyId: idSchema.optional(),
    code: redeemCodeSchema.optional(),
    // Only an admin may issue on a user's behalf.
    userId: idSchema.optional(),
  })
  .strict()
  .refine((b) => (b.policyId === undefined) !== (b.code === undefined), { message: 'give either policyId or code' });

/** Counts code attempts per caller and address before the lookup (src/web/middleware/rate-limit.ts); takeAttempt throws 429 past the budget. */
export interface WrongCodeGuard {
  takeAttempt(who: { userId: string; ip: string }): Promise<void>;
  refundAttempt(who: { userId: string; ip: string }): Promise<void>;
}

type Resolved = Pick<IssueJob, 'policyId' | 'via' | 'codeHash'>;

export interface IssueRouteDeps {
  queues: Queues;
  codeSecret: string;
  wrongCodes: WrongCodeGuard;
  outcomes: OutcomeHub;
  rejections: RejectionCounter;
  log: Logger;
}

export function issueRoutes(deps: IssueRouteDeps) {
  const app = new Hono<AppEnv>();
  const intake = createIssueIntake({ queues: deps.queues, hub: deps.outcomes, rejections: deps.rejections, log: deps.log });

  /**
   * The policy a code names. A shared code is looked up in the policy cache, a single-use code by its
   * keyed hash. Every attempt is counted before the lookup and given back when the code exists, so
   * a code that names nothing costs the caller one of its wrong-code budget, and is still answered
   * as a job (rejected CODE_NOT_FOUND) like every other issue request.
   */
  const resolveCode = async (code: string, who: { userId: string; ip: string }): Promise<Resolved> => {
    await deps.wrongCodes.takeAttempt(who);
    const normalized = normalizeCode(code);
    const found = await lookUpCode(normalized).catch(async (error: unknown) => {
      await deps.wrongCodes.refundAttempt(who);
      throw error;
    });
    if (found.policyId) await deps.wrongCodes.refundAttempt(who);
    return found;
  };
  const lookUpCode = async (normalized: string): Promise<Resolved> => {
    const shared = await policyCache.sharedCodePolicy(normalized);
    if (shared) return { policyId: shared, via: 'shared-code' };
    const hash = codeHash(deps.codeSecret, normalized);
    const policyId = await policyOfCode(sequelize(), hash);
    if (policyId) return { policyId, via: 'single-code', codeHash: hash };
    return { policyId: null, via: 'single-code' };
  };

  app.post('/', async (c) => {
    const body = await jsonBody(c, issueBody);
    const user = c.get('user');
    if (body.userId !== undefined && body.userId !== user.id && user.role !== 'admin') {
      throw new AppError('FORBIDDEN', 'Only an admin may issue a coupon to another user.');
    }
    const target: Resolved =
      body.code !== undefined
        ? await resolveCode(body.code, { userId: user.id, ip: c.get('clientIp') })
        : { policyId: body.policyId as string };
    const waitMs = preferredWaitMs(c) ?? 0;
    const idempotency = idempotencyOf(c, user.id, body.userId ?? user.id, target);
    const answer = await intake({
      ...(idempotency && { idempotency }),
      ...target,
      userId: body.userId ?? user.id,
      actorId: user.id,
      traceId: c.get('traceId'),
      requestedAt: new Date().toISOString(),
      waitMs,
    });
    if (answer.conflict)
      throw new AppError('IDEMPOTENCY_KEY_REUSED', 'This Idempotency-Key was used with another request body in the last 24 hours.');
    if (answer.replay) return replayAnswer(c, deps, answer.requestId, waitMs);
    logWith(c, {
      enqueued: answer.decided ? undefined : 'issue',
      jobId: answer.requestId,
      policyId: target.policyId,
      via: target.via ?? 'policy',
      ...(answer.decided?.e && { refused: answer.decided.e.code }),
    });
    if (waitMs === 0) return accepted(c, answer.requestId);
    const outcome = answer.decided ?? (await outcomeOf(deps, answer));
    if (!outcome || outcome.s === 'pending') return accepted(c, answer.requestId);
    const { ownerId: _owner, ...view } = viewOfOutcome(
      answer.requestId,
      await withPostgresWord(answer.requestId, outcome).catch(() => outcome),
    );
    return finishedAnswer(c, view, waitMs);
  });

  return app;
}

/** A queued request's outcome: pushed by its worker within the client's wait, else what is stored then (null when unreadable). */
async function outcomeOf(deps: IssueRouteDeps, answer: IntakeAnswer): Promise<StoredOutcome | null> {
  const pushed = await answer.outcome;
  if (pushed) return pushed;
  // The wait ran out, or the push was missed (the subscription was reconnecting): read what is stored.
  // The request is queued: whatever goes wrong here, the answer stays a 202, never a 503.
  return readOutcome(deps.queues.connection, answer.requestId, deps.log).catch((error: unknown) => {
    deps.log.warn({ err: error, jobId: answer.requestId }, 'reading the outcome failed; answering 202');
    return null;
  });
}

/**
 * The Idempotency-Key of an issue request, optional: a client that may retry a request whose answer
 * it never got (a dropped connection, a web process that died) sends one, and the retry answers the
 * first request's outcome instead of USER_LIMIT_REACHED. Scoped to the caller, as for reserve.
 */
function idempotencyOf(c: Context<AppEnv>, callerId: string, userId: string, target: Resolved) {
  const header = c.req.header('idempotency-key');
  if (header === undefined) return undefined;
  const key = parseWith(idempotencyKeySchema, header);
  return {
    redisKey: issueIdempotencyRecordKey(callerId, key),
    fingerprint: fingerprint({ policyId: target.policyId, via: target.via ?? 'policy', codeHash: target.codeHash ?? null, userId }),
  };
}

/** A replayed Idempotency-Key: the first request's job, and with Prefer: wait its outcome. */
async function replayAnswer(c: Context<AppEnv>, deps: IssueRouteDeps, requestId: string, waitMs: number) {
  logWith(c, { replayOf: requestId });
  if (waitMs === 0) return accepted(c, requestId);
  const view = await issueRequestView(c, deps.queues, deps.outcomes, requestId, waitMs);
  if (!view || view.status === 'pending') return accepted(c, requestId);
  return finishedAnswer(c, view, waitMs);
}
