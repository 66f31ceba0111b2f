// Issues one coupon of any policy: admit in Redis, write in Postgres, settle. Every issue method
// comes through here (by policy id, by code, by user event, by direct grant), so I1, I2 and the
// exactly-once write per request hold alike for all of them.
import type { Sequelize } from 'sequelize';
import type { Logger } from '../core/logger';
import { reason, type ErrorCode } from '../core/errors';
import { couponsIssuedTotal } from '../core/metrics';
import { couponView, findCouponByRequest, insertIssuedCoupon, type Coupon, type InsertOutcome } from '../storage/coupon';
import { CouponPolicy } from '../storage/policy';
import { invalidateUserCoupons } from '../storage/cache/user-coupon-cache';
import { couponExpiry, type IssueMethod } from '../domain/policy-rules';
import type { CouponView, JobOutcome } from '../queues/jobs';
import { admit, releaseAdmission, settleAdmission, type Admission, type AdmissionDeps } from '../storage/admission/admission';
import { claimCode, markCodeUsed, releaseCode, releaseUnusedCode } from '../storage/code-claims';
import { noteAdmitted, noteSoldOutRefusal } from '../observability/stock-alerts';
import { failpoint } from '../core/failpoints';

/** A policy asked for by id issues only if it is one of these; the other methods have their own way in. */
export const ISSUE_BY_POLICY_METHODS = ['FIRST_COME', 'DOWNLOAD'] as const;

export interface IssueCouponDeps extends AdmissionDeps {
  /** The database the coupon is written to. */
  db: Sequelize;
}

/** Thrown when the attempt should be retried; the admission (and its slot) is kept for the retry. */
export class RetryableIssueError extends Error {}

/** One issue request as a worker sees it, wherever it came from (a batch, a grant, an event). */
export interface IssueRequest {
  policyId: string;
  userId: string;
  requestId: string;
  /** The issue methods the policy must have for this way of asking (e.g. CODE for a code). */
  methods: readonly IssueMethod[];
  /** A single-use code being redeemed (its hash): the coupon carries it, so it is used once. */
  codeHash?: string;
  /** Set when the web admitted the request already: the policy's quantity and its admission count then. */
  admittedAs?: { total: number | null; admitted: number | null };
}

/** How this run of the request stands among the attempts of its job. */
export interface Attempt {
  /** An earlier run may have started it (a retry, or a takeover after a worker died). */
  rerun: boolean;
  /** No attempt follows this one: stock held for a failed request must be given back now. */
  last: boolean;
}

export async function issueCoupon(
  deps: IssueCouponDeps,
  request: IssueRequest,
  attempt: Attempt,
  log: Logger,
): Promise<JobOutcome<CouponView>> {
  const { policyId, userId, requestId, codeHash } = request;
  const progress = { counted: false };

  // Everything from here, the rerun's lookup and the code's claim included, ends in the catch below
  // when it throws, so the last attempt always gives back what it holds.
  try {
    if (attempt.rerun) {
      // An earlier run may have written the coupon and settled its admission before dying,
      // so the answer may already be in Postgres.
      const earlier = await findCouponByRequest(requestId);
      if (earlier) {
        // The earlier run may have died between its commit and dropping the user's cached list.
        await settleCommitted(deps, request, earlier, 'strict');
        log.info({ couponId: earlier.id, replay: true }, 'coupon issued by an earlier run');
        return { outcome: 'succeeded', result: couponView(earlier) };
      }
    }
    if (codeHash && !(await claimCode(deps.redis, codeHash, requestId))) {
      log.info('code already used or being redeemed by another request');
      return { outcome: 'rejected', reason: reason('CODE_ALREADY_USED') };
    }
    const admission = await admitWaitingForStock(deps, request, attempt);
    if (admission.kind === 'refused') {
      log.debug({ code: admission.code }, 'issue refused');
      if (admission.code === 'SOLD_OUT') noteSoldOutRefusal(log, policyId, admission.total);
      return await refuse(deps, request, admission.code);
    }
    // A request the web admitted carries the count it was admitted as: the alert marks are its to see.
    const mark = admission.resumed && request.admittedAs ? request.admittedAs : admission;
    noteAdmitted(log, policyId, mark.total, mark.admitted);

    // A worker that dies here holds the admission's unit, and no coupon is written.
    await failpoint('issue.after-admission', log);
    const issuedAt = new Date();
    const validity = await validityOf(admission, policyId);
    const written = await insertIssuedCoupon(deps.db, {
      policyId,
      userId,
      slot: admission.slot,
      requestId,
      issuedAt,
      expiresAt: couponExpiry(validity, issuedAt),
      ...(codeHash && { codeHash }),
    });
    // What follows each answer of the insert is a row of ON_INSERT (below).
    return await afterInsert(deps, request, written, admission.slot, log, progress);
  } catch (error) {
    // A taken slot was dropped already (releasing again changes nothing), but its code's claim is
    // still held: every failure of the last attempt goes through here.
    if (attempt.last) {
      // No more attempts. The insert may have committed before its answer was lost: then the
      // coupon is the answer. Otherwise give the stock back so it is not lost (I3). If this
      // process dies before it gets here, the reconciler does the same from the job's final state.
      // `undefined`: Postgres could not be asked, so whether the coupon exists is not known.
      const committed = await findCouponByRequest(requestId).catch(() => undefined);
      if (committed) {
        if (!progress.counted) couponsIssuedTotal.inc({ policy_id: policyId });
        await settleCommitted(deps, request, committed, 'best-effort');
        return { outcome: 'succeeded', result: couponView(committed) };
      }
      await releaseAdmission(deps.redis, policyId, requestId, true).catch(() => undefined);
      // The code is free again (its owner may retry), but only once Postgres said no coupon was
      // written for this request; whether another coupon holds the code is asked in releaseUnusedCode.
      // When Postgres cannot say, the claim stays and lapses after its TTL.
      if (codeHash && committed === null) await releaseUnusedCode(deps.db, deps.redis, codeHash, requestId).catch(() => undefined);
    }
    throw error;
  }
}

/**
 * What follows a coupon found committed (by an earlier run, or by an insert whose answer was lost):
 * the user's cached list dropped, the admission settled on the coupon's slot, its code marked used.
 * 'best-effort' (the last attempt, already failing) tries each step whatever the others did.
 */
async function settleCommitted(
  deps: IssueCouponDeps,
  request: IssueRequest,
  coupon: Coupon,
  mode: 'strict' | 'best-effort',
): Promise<void> {
  const { policyId, userId, requestId, codeHash } = request;
  const steps = [
    () => invalidateUserCoupons([userId]),
    () => settleAdmission(deps.redis, policyId, requestId, coupon.slot),
    ...(codeHash ? [() => markCodeUsed(deps.redis, codeHash)] : []),
  ];
  for (const step of steps) await (mode === 'strict' ? step() : step().catch(() => undefined));
}

/**
 * A refusal once the code is claimed: the claim is freed again, or nobody could redeem the code.
 * (Before the claim, and for a code another coupon holds, the answer is a plain rejection.)
 */
async function refuse(deps: AdmissionDeps, request: IssueRequest, code: ErrorCode): Promise<JobOutcome<CouponView>> {
  if (request.codeHash) await releaseCode(deps.redis, request.codeHash, request.requestId);
  return { outcome: 'rejected', reason: reason(code) };
}

/** What follows one answer of the coupon insert. */
interface AfterInsert {
  /** A coupon written now: counted in coupons_issued_total (and the issue.after-commit failpoint). */
  counts?: true;
  /**
   * The request's admission: settled on the written coupon's slot, released with its unit back in
   * the stock (`release`), or released with its slot dropped because Postgres holds it (`drop`).
   */
  admission: 'settle' | 'release' | 'drop';
  /** The code's claim is marked used: a coupon holds the code, this request's or another's. */
  markCodeUsed?: true;
  log?: { level: 'info' | 'warn'; msg: string; fields?: (coupon: Coupon | null, admittedSlot: number | null) => object };
  /**
   * The answer: the written coupon; a refusal that frees the code's claim (`refuse`) or keeps it
   * (`reject`); or a retry (RetryableIssueError), the next attempt taking another slot.
   */
  answer: 'coupon' | { refuse: ErrorCode } | { reject: ErrorCode } | 'retry';
}

/** An answer that carries no coupon can neither settle on its slot nor answer with it. */
type AfterInsertOf<K extends InsertOutcome['kind']> =
  Extract<InsertOutcome, { kind: K }> extends { coupon: Coupon }
    ? AfterInsert
    : AfterInsert & { admission: 'release' | 'drop'; answer: Exclude<AfterInsert['answer'], 'coupon'> };

/** Each answer of the coupon insert (src/storage/coupon.ts, insert_issued_coupons) and what follows it. */
const ON_INSERT: { [K in InsertOutcome['kind']]: AfterInsertOf<K> } = {
  inserted: {
    counts: true,
    admission: 'settle',
    markCodeUsed: true,
    log: { level: 'info', msg: 'coupon issued', fields: (coupon, admittedSlot) => ({ couponId: coupon?.id, slot: admittedSlot }) },
    answer: 'coupon',
  },
  // An earlier run of this request wrote the coupon. If this run holds another slot (it was
  // admitted afresh after the earlier run settled), settling gives that slot back.
  'duplicate-request': {
    admission: 'settle',
    markCodeUsed: true,
    log: {
      level: 'info',
      msg: 'coupon issued by an earlier run',
      fields: (coupon) => ({ couponId: coupon?.id, slot: coupon?.slot, replay: true }),
    },
    answer: 'coupon',
  },
  // Paused or ended after this request was admitted: Postgres refuses, the slot goes back.
  'policy-inactive': { admission: 'release', answer: { refuse: 'POLICY_NOT_ACTIVE' } },
  // Redis believed the user had room; Postgres knows better. Give the slot back.
  'user-limit': {
    admission: 'release',
    log: {
      level: 'warn',
      msg: 'admission disagreed with Postgres on the per-user limit',
      fields: (_, admittedSlot) => ({ slot: admittedSlot }),
    },
    answer: { refuse: 'USER_LIMIT_REACHED' },
  },
  // Another coupon holds the code (its claim lapsed or Redis lost it): the slot goes back, the
  // claim stays as the mark of a used code.
  'code-used': {
    admission: 'release',
    markCodeUsed: true,
    log: { level: 'warn', msg: 'code claimed in Redis but already used in Postgres' },
    answer: { reject: 'CODE_ALREADY_USED' },
  },
  // The code is no code of this policy: the ingress resolved it, so this only follows a code
  // deleted meanwhile (a rerun of its generation job).
  'code-unknown': { admission: 'release', answer: { refuse: 'CODE_NOT_FOUND' } },
  // The slot is already some coupon's: drop it and take another on the next attempt.
  'slot-taken': {
    admission: 'drop',
    log: {
      level: 'warn',
      msg: 'admission handed out a slot Postgres already holds',
      fields: (_, admittedSlot) => ({ slot: admittedSlot }),
    },
    answer: 'retry',
  },
};

/**
 * Carries out what follows the insert's answer, as its entry in ON_INSERT says, in this order:
 * count, admission, code, log, answer. `progress.counted`: the coupon was counted (the last
 * attempt's catch must not count it again).
 */
async function afterInsert(
  deps: AdmissionDeps,
  request: IssueRequest,
  written: InsertOutcome,
  admittedSlot: number | null,
  log: Logger,
  progress: { counted: boolean },
): Promise<JobOutcome<CouponView>> {
  const { policyId, requestId, codeHash } = request;
  const rule = ON_INSERT[written.kind];
  const coupon = 'coupon' in written ? written.coupon : null;
  const theCoupon = (): Coupon => {
    if (!coupon) throw new Error(`a coupon insert answered ${written.kind}, which carries no coupon`);
    return coupon;
  };
  if (rule.counts) {
    couponsIssuedTotal.inc({ policy_id: policyId });
    progress.counted = true;
    // A worker that dies here has committed the coupon; its admission is not settled yet.
    await failpoint('issue.after-commit', log);
  }
  if (rule.admission === 'settle') await settleAdmission(deps.redis, policyId, requestId, theCoupon().slot);
  else await releaseAdmission(deps.redis, policyId, requestId, rule.admission === 'release');
  if (rule.markCodeUsed && codeHash) await markCodeUsed(deps.redis, codeHash);
  if (rule.log) {
    if (rule.log.fields) log[rule.log.level](rule.log.fields(coupon, admittedSlot), rule.log.msg);
    else log[rule.log.level](rule.log.msg);
  }
  const { answer } = rule;
  if (answer === 'coupon') return { outcome: 'succeeded', result: couponView(theCoupon()) };
  if (answer === 'retry') throw new RetryableIssueError(`slot ${admittedSlot} of policy ${policyId} was taken`);
  if ('refuse' in answer) return refuse(deps, request, answer.refuse);
  return { outcome: 'rejected', reason: reason(answer.reject) };
}

/** How long a request waits for a pending admission to give a unit back before its attempt ends. */
const STOCK_WAIT_MS = 5_000;

/**
 * Admits the request; while the stock is gone but other admissions are still pending (one may fail
 * and give its unit back), waits for them instead of answering SOLD_OUT, so SOLD_OUT is final. The
 * admissions it waits for are running now (or stranded by a crash, which the reconciler undoes):
 * past STOCK_WAIT_MS the attempt is retried, and the last attempt takes SOLD_OUT as the answer.
 */
async function admitWaitingForStock(
  deps: AdmissionDeps,
  request: IssueRequest,
  attempt: Attempt,
): Promise<Exclude<Admission, { kind: 'wait' }>> {
  const started = Date.now();
  for (let pause = 5; ; pause = Math.min(pause * 2, 100)) {
    const admission = await admit(deps, request);
    if (admission.kind !== 'wait') return admission;
    if (Date.now() - started >= STOCK_WAIT_MS) {
      if (attempt.last) return { kind: 'refused', code: 'SOLD_OUT' };
      throw new RetryableIssueError(`stock of policy ${request.policyId} is still held by pending admissions`);
    }
    await new Promise((resolve) => setTimeout(resolve, pause));
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
