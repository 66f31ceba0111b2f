// The checkout queue's jobs: reserve a coupon for an order, cancel or confirm a reservation, apply a
// payment event. Each job runs one use case (src/usecases/reserve.ts, src/usecases/payment-event.ts) that
// changes one reservation, written together with the other jobs of the same event-loop turn; a
// Redis lock on the coupon keeps concurrent reserves of one coupon queueing in Redis rather than
// deciding on the same row.
import { UnrecoverableError, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Sequelize } from 'sequelize';
import { config } from '../core/config';
import { reason, type ErrorCode } from '../core/errors';
import type { Logger } from '../core/logger';
import { redisKeys } from '../core/redis-keys';
import type { PaymentEventType } from '../domain/checkout-rules';
import { Reservation, reservationResult, reservationView, type ReservationView } from '../storage/reservation';
import { earlierPaymentPending } from '../storage/inbox';
import { paymentJobSchema, reservationActionJobSchema, reserveFingerprint, reserveJobSchema, type JobOutcome } from '../queues/jobs';
import type { JobKind } from '../queues/names';
import type { PaymentResult, PaymentReturn, ReservationResult } from '../queues/results';
import { jobData } from '../queues/job-data';
import { withLock, type Locks } from '../core/lock';
import { failpoint } from '../core/failpoints';
import {
  applyCheckoutEvent,
  paymentCheckoutEvent,
  reportCheckoutOutcome,
  type CheckoutEvent,
  type SettledCheckoutOutcome,
} from '../usecases/payment-event';
import { reserveCoupon } from '../usecases/reserve';

export interface CheckoutDeps {
  /** The database the use cases read and write. */
  db: Sequelize;
  locks: Locks;
  /** Sets an Idempotency-Key's record back to the body the key reserved for. */
  redis: Redis;
  log: Logger;
}

/** Thrown when the job should run again later (a refund ahead of its payment); BullMQ backs off. */
export class NotYetApplicable extends Error {}

const COUPON_LOCK_TTL_MS = 5_000;

export function createCheckoutProcessor(deps: CheckoutDeps) {
  const handlers: Partial<Record<JobKind, (job: Job) => Promise<unknown>>> = {
    reserve: (job) => reserve(deps, job),
    cancel: (job) => reservationAction(deps, job, 'cancel'),
    confirm: (job) => reservationAction(deps, job, 'confirm'),
    payment: (job) => payment(deps, job),
  };
  return async (job: Job): Promise<unknown> => {
    const handler = handlers[job.name as JobKind];
    if (!handler) throw new UnrecoverableError(`no handler for ${job.name} jobs on the checkout queue`);
    return handler(job);
  };
}

async function reserve(deps: CheckoutDeps, job: Job): Promise<JobOutcome<ReservationResult>> {
  const data = jobData(job, reserveJobSchema);
  const log = deps.log.child({ traceId: data.traceId, jobId: job.id, couponId: data.couponId, orderId: data.orderId });
  const outcome = await withLock(deps.locks, redisKeys().couponLock(data.couponId), COUPON_LOCK_TTL_MS, () =>
    reserveCoupon(deps, {
      couponId: data.couponId,
      userId: data.userId,
      orderId: data.orderId,
      orderAmount: data.orderAmount,
      requestId: data.requestId ?? String(job.id),
      fingerprint: reserveFingerprint(data),
      ttlSeconds: config().RESERVATION_TTL_SECONDS,
    }),
  );
  if (!outcome) throw new Error('coupon lock not acquired');
  if (outcome.kind === 'refused') {
    log.info({ code: outcome.reason.code }, 'reservation refused');
    if (outcome.boundTo) await rebindIdempotencyRecord(deps, log, outcome.boundTo);
    return { outcome: 'rejected', reason: outcome.reason };
  }
  const r = outcome.reservation;
  // A worker that dies here has committed the reservation and answered nobody.
  await failpoint('checkout.after-commit');
  log.info({ reservationId: r.id, discountAmount: r.discountAmount, expiresAt: r.expiresAt, replay: outcome.replay }, 'coupon reserved');
  return { outcome: 'succeeded', result: reservationResult(r) };
}

/**
 * A body refused because its key reserved for another one found the key's Redis record gone and
 * claimed it anew: the record is set back to the body the key reserved for, so that body's replays
 * get their first answer again and others their 409 at the web. Only while the record exists; a
 * failure costs only that (Postgres decides either way).
 */
async function rebindIdempotencyRecord(deps: CheckoutDeps, log: Logger, made: Reservation): Promise<void> {
  const fingerprint = made.requestFingerprint ?? reserveFingerprint(made);
  await deps.redis.set(redisKeys().idempotency(made.requestId), fingerprint, 'KEEPTTL', 'XX').catch((error: unknown) => {
    log.warn({ err: error }, 'idempotency record not rebound');
  });
}

const ACTIONS = {
  cancel: { type: 'PAYMENT_CANCELLED' as PaymentEventType, source: 'api.cancel' },
  confirm: { type: 'PAYMENT_COMPLETED' as PaymentEventType, source: 'api.confirm' },
};

async function reservationAction(deps: CheckoutDeps, job: Job, action: 'cancel' | 'confirm'): Promise<JobOutcome<ReservationView>> {
  const data = jobData(job, reservationActionJobSchema);
  const log = deps.log.child({ traceId: data.traceId, jobId: job.id, reservationId: data.reservationId });
  const byAdmin = data.actorId !== data.userId;
  const endReason = action === 'confirm' ? 'CONFIRMED_BY_ADMIN' : byAdmin ? 'CANCELLED_BY_ADMIN' : 'CANCELLED_BY_USER';
  const outcome = await applyOrWait(deps, {
    ...ACTIONS[action],
    eventId: String(job.id),
    reservationId: data.reservationId,
    ownerId: data.userId,
    endReason,
  });
  reportCheckoutOutcome(log, action, outcome);
  switch (outcome.kind) {
    case 'applied':
      return { outcome: 'succeeded', result: reservationView(outcome.reservation) };
    case 'ignored':
      return { outcome: 'rejected', reason: outcome.reason };
    case 'duplicate': {
      // The same action ran before (its job was retried or added again): answer as it did.
      const current = await Reservation.findByPk(data.reservationId);
      if (outcome.outcome === 'APPLIED' && current) return { outcome: 'succeeded', result: reservationView(current) };
      return { outcome: 'rejected', reason: reason((outcome.reasonCode as 'RESERVATION_NOT_PENDING' | null) ?? 'RESERVATION_NOT_PENDING') };
    }
  }
}

async function payment(deps: CheckoutDeps, job: Job): Promise<PaymentReturn> {
  const { event, traceId, source } = jobData(job, paymentJobSchema);
  const log = deps.log.child({ traceId, jobId: job.id, eventId: event.eventId, orderId: event.orderId, kafka: source });
  // A refund ahead of its payment is retried PAYMENT_WAIT_ATTEMPTS times, then recorded as ignored;
  // but not while an event of its order that the bridge accepted earlier is still in the inbox
  // unapplied: that one's job may have been lost by Redis and be on its way back (I11).
  const waitedEnough = job.attemptsMade >= config().PAYMENT_WAIT_ATTEMPTS;
  const earlierPending = waitedEnough && (await earlierPaymentPending(deps.db, event.eventId, event.orderId));
  const outcome = await applyOrWait(deps, paymentCheckoutEvent(event, waitedEnough && !earlierPending)).catch((error: unknown) => {
    if (earlierPending && error instanceof NotYetApplicable)
      log.info({ attempts: job.attemptsMade + 1 }, `${event.type} keeps waiting: an earlier event of its order is not applied yet`);
    throw error;
  });
  reportCheckoutOutcome(log, event.type, outcome);
  const base = { eventId: event.eventId };
  switch (outcome.kind) {
    case 'applied':
      return { outcome: 'succeeded', result: { ...base, outcome: 'APPLIED', reservation: reservationView(outcome.reservation) } };
    case 'ignored':
      return {
        outcome: 'succeeded',
        result: {
          ...base,
          outcome: outcome.conflict ? 'CONFLICT' : 'IGNORED',
          reason: outcome.reason,
          ...(outcome.reservation && { reservation: reservationView(outcome.reservation) }),
        },
      };
    case 'duplicate': {
      // A rerun of this very job (it died after its write) answers what its first run did; another
      // delivery of the event says it was a duplicate, and what the first one did.
      const earlier = {
        outcome: outcome.outcome as PaymentResult['outcome'],
        ...(outcome.reasonCode && { reason: reason(outcome.reasonCode as ErrorCode) }),
      };
      if (job.attemptsStarted > 1) return { outcome: 'succeeded', result: { ...base, ...earlier } };
      return { outcome: 'succeeded', result: { ...base, outcome: 'DUPLICATE', earlier } };
    }
  }
}

async function applyOrWait(deps: CheckoutDeps, event: CheckoutEvent): Promise<SettledCheckoutOutcome> {
  const outcome = await applyCheckoutEvent(deps, event);
  if (outcome.kind === 'wait') throw new NotYetApplicable(outcome.why);
  return outcome;
}
