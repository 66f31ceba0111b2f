// POST /coupons/issue: by policy id, or by a code (a CODE policy's shared code or a single-use code).
// Validates, resolves a code to its policy, enqueues and answers 202 with the job to poll.
import { Hono } from 'hono';
import { z } from 'zod';
import { AppError } from '../../core/errors';
import { sequelize } from '../../core/postgres';
import { codeHash, normalizeCode, policyOfCode, redeemCodeSchema } from '../../models/codes';
import { policyCache } from '../../models/policy-cache';
import type { Queues } from '../../queues/connection';
import { createIssueBatcher } from '../../queues/enqueue';
import { idSchema, type IssueJob } from '../../queues/jobs';
import type { AppEnv } from '../context';
import { logWith } from '../middleware/trace';
import { jsonBody } from '../validation';
import { answerJob } from './jobs';

export const issueBody = z
  .object({
    policyId: idSchema.optional(),
    code: redeemCodeSchema.optional(),
    // Only an admin may issue on a user's behalf.
    userId: idSchema.optional(),
  })
  .strict()
  .refine((b) => (b.policyId === undefined) !== (b.code === undefined), { message: 'give either policyId or code' });

/** Counts code attempts per caller and address before the lookup (ingress/middleware/rate-limit.ts); takeAttempt throws 429 past the budget. */
export interface WrongCodeGuard {
  takeAttempt(who: { userId: string; ip: string }): Promise<void>;
  refundAttempt(who: { userId: string; ip: string }): Promise<void>;
}

type Resolved = Pick<IssueJob, 'policyId' | 'via' | 'codeHash'>;

export function issueRoutes(deps: { queues: Queues; codeSecret: string; wrongCodes: WrongCodeGuard }) {
  const app = new Hono<AppEnv>();
  const enqueueIssue = createIssueBatcher(deps.queues);

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
    const jobId = await enqueueIssue({
      ...target,
      userId: body.userId ?? user.id,
      actorId: user.id,
      traceId: c.get('traceId'),
      requestedAt: new Date().toISOString(),
    });
    logWith(c, { enqueued: 'issue', jobId, policyId: target.policyId, via: target.via ?? 'policy' });
    return answerJob(c, deps.queues, jobId);
  });

  return app;
}
