// Issues one coupon of a FIRST_COME or DOWNLOAD policy: admit in Redis, write in Postgres, settle.
import type { Logger } from '../core/logger';
import { reason } from '../core/errors';
import { couponView, findCouponByRequest, insertIssuedCoupon } from '../models/coupon';
import { CouponPolicy } from '../models/policy';
import { couponExpiry } from '../models/policy-rules';
import type { CouponView, JobOutcome } from '../queues/jobs';
import { admit, releaseAdmission, settleAdmission, type AdmissionDeps } from './admission/admission';

export const ISSUE_BY_POLICY_METHODS = ['FIRST_COME', 'DOWNLOAD'] as const;

/** Thrown when the attempt should be retried; the admission (and its slot) is kept for the retry. */
export class RetryableIssueError extends Error {}

/** One issue request as a worker sees it, wherever it came from (a job of its own or a batch). */
export interface IssueRequest {
  policyId: string;
  userId: string;
  requestId: string;
}

/** How this run of the request stands among the attempts of its job. */
export interface Attempt {
  /** An earlier run may have started it (a retry, or a takeover after a worker died). */
  rerun: boolean;
  /** No attempt follows this one: stock held for a failed request must be given back now. */
  last: boolean;
}

export async function issueCoupon(
  deps: AdmissionDeps,
  request: IssueRequest,
  attempt: Attempt,
  log: Logger,
): Promise<JobOutcome<CouponView>> {
  const { policyId, userId, requestId } = request;
  if (attempt.rerun) {
    // An earlier run may have written the coupon and settled its admission before dying,
    // so the answer may already be in Postgres.
    const earlier = await findCouponByRequest(requestId);
    if (earlier) {
      await settleAdmission(deps.redis, policyId, requestId, earlier.slot);
      log.info({ couponId: earlier.id, replay: true }, 'coupon issued by an earlier run');
      return { outcome: 'succeeded', result: couponView(earlier) };
    }
  }
  const admission = await admit(deps, { policyId, requestId, userId, methods: ISSUE_BY_POLICY_METHODS });
  if (admission.kind === 'refused') {
    log.debug({ code: admission.code }, 'issue refused');
    return { outcome: 'rejected', reason: reason(admission.code) };
  }

  try {
    const issuedAt = new Date();
    const validity = await validityOf(admission, policyId);
    const written = await insertIssuedCoupon({
      policyId,
      userId,
      slot: admission.slot,
      requestId,
      issuedAt,
      expiresAt: couponExpiry(validity, issuedAt),
    });
    switch (written.kind) {
      case 'inserted':
        await settleAdmission(deps.redis, policyId, requestId, written.coupon.slot);
        log.info({ couponId: written.coupon.id, slot: admission.slot }, 'coupon issued');
        return { outcome: 'succeeded', result: couponView(written.coupon) };
      case 'duplicate-request':
        // An earlier run of this request wrote the coupon. If this run holds another slot (it was
        // admitted afresh after the earlier run settled), settling gives that slot back.
        await settleAdmission(deps.redis, policyId, requestId, written.coupon.slot);
        log.info({ couponId: written.coupon.id, slot: written.coupon.slot, replay: true }, 'coupon issued by an earlier run');
        return { outcome: 'succeeded', result: couponView(written.coupon) };
      case 'policy-inactive':
        // Paused or ended after this request was admitted: Postgres refuses, the slot goes back.
        await releaseAdmission(deps.redis, policyId, requestId, true);
        return { outcome: 'rejected', reason: reason('POLICY_NOT_ACTIVE') };
      case 'user-limit':
        // Redis believed the user had room; Postgres knows better. Give the slot back.
        await releaseAdmission(deps.redis, policyId, requestId, true);
        log.warn({ slot: admission.slot }, 'admission disagreed with Postgres on the per-user limit');
        return { outcome: 'rejected', reason: reason('USER_LIMIT_REACHED') };
      case 'slot-taken':
        // The slot is already some coupon's: drop it and take another on the next attempt.
        await releaseAdmission(deps.redis, policyId, requestId, false);
        log.warn({ slot: admission.slot }, 'admission handed out a slot Postgres already holds');
        throw new RetryableIssueError(`slot ${admission.slot} of policy ${policyId} was taken`);
    }
  } catch (error) {
    if (attempt.last && !(error instanceof RetryableIssueError)) {
      // No more attempts. The insert may have committed before its answer was lost: then the
      // coupon is the answer. Otherwise give the stock back so it is not lost (I3). If this
      // process dies before it gets here, the reconciler does the same from the job's final state.
      const committed = await findCouponByRequest(requestId).catch(() => null);
      if (committed) {
        await settleAdmission(deps.redis, policyId, requestId, committed.slot).catch(() => undefined);
        return { outcome: 'succeeded', result: couponView(committed) };
      }
      await releaseAdmission(deps.redis, policyId, requestId, true).catch(() => undefined);
    }
    throw error;
  }
}

async function validityOf(
  admission: { validUntil: Date | null; validDays: number | null },
  policyId: string,
): Promise<{ validUntil: Date | null; validDays: number | null }> {
  if (admission.validUntil !== null || admission.validDays !== null) return admission;
  // A retried admission whose cached policy expired meanwhile: read the rules from Postgres.
  const policy = await CouponPolicy.findByPk(policyId, { attributes: ['validUntil', 'validDays'] });
  if (!policy) throw new Error(`policy ${policyId} vanished after admission`);
  return { validUntil: policy.validUntil, validDays: policy.validDays };
}
