// Apply a payment event, or an admin's confirm, or a user's cancel, exactly once in effect: read,
// decide, write. The state the event is about is read without locks (checkout_event_states), a
// pure function decides (planEvent, src/domain/plan-event.ts), and its write goes to
// apply_checkout_events (src/storage/sql/apply_checkout_events.sql), batched with the other events of
// the same turn: a compare-and-set that takes effect only if the rows are still as read, else they
// are read and decided again. Lock order: every write that changes a reservation locks its coupon
// row first.
import { QueryTypes, type Sequelize } from 'sequelize';
import { raiseAlert } from '../core/alerts';
import type { Reason } from '../core/errors';
import type { Logger } from '../core/logger';
import { paymentConflictsTotal } from '../core/metrics';
import { noteCouponUsed } from '../observability/usage-metrics';
import { asJson, batchedQuery } from '../storage/batched-query';
import type { CouponState, PaymentPlan, ReservationState } from '../domain/checkout-rules';
import { eventKey, planEvent, type CheckoutEvent, type EventState, type EventWrite } from '../domain/plan-event';
import { Reservation, reservationFromJson } from '../storage/reservation';
import type { PaymentEvent } from '../queues/jobs';
import { invalidateUserCoupons } from '../storage/cache/user-coupon-cache';

export type { CheckoutEvent } from '../domain/plan-event';

export interface PaymentEventDeps {
  db: Sequelize;
}

/** An outcome that is final: the event took effect, changed nothing, or had already been processed. */
export type SettledCheckoutOutcome = Exclude<CheckoutOutcome, { kind: 'wait' }>;

export type CheckoutOutcome =
  | { kind: 'applied'; action: Exclude<PaymentPlan['action'], 'none' | 'wait'>; reservation: Reservation }
  | { kind: 'ignored'; conflict: boolean; reason: Reason; reservation: Reservation | null }
  | { kind: 'duplicate'; outcome: string; reasonCode: string | null }
  | { kind: 'wait'; why: string };

/**
 * A payment event from Kafka as the checkout event it is applied as. `noWait`: it has waited long
 * enough, and what still does not apply is recorded as ignored (the worker's last attempts).
 */
export function paymentCheckoutEvent(event: PaymentEvent, noWait = false): CheckoutEvent {
  return {
    source: 'payments',
    eventId: event.eventId,
    type: event.type,
    orderId: event.orderId,
    reservationId: event.reservationId,
    userId: event.userId,
    endReason: event.type,
    noWait,
  };
}

/** How often a decision is made again when the rows changed between the read and the write. */
const MAX_DECISIONS = 5;

/** A row of checkout_event_states. */
interface EventStateRow {
  key: string;
  done_outcome: string | null;
  done_reason: string | null;
  pending_for_order: number | null;
  r_id: string | null;
  r_status: ReservationState | null;
  r_refunded: boolean | null;
  r_user: string | null;
  r_order: string | null;
  c_id: string | null;
  c_status: CouponState | null;
  c_expires: Date | null;
  c_reservation: string | null;
  restore_on_refund: boolean | null;
  /** The owner of the event's order; null when nobody reserved on it. */
  o_user: string | null;
}

/**
 * The state the events of one turn are about, in one query: whether each was processed already,
 * the reservation it names (or its order's pending, else newest, one), and that reservation's coupon.
 */
interface EventRef {
  key: string;
  source: string;
  eventId: string;
  reservationId: string | null;
  orderId: string | null;
  userId: string | null;
}

const readEventState = batchedQuery<EventRef, EventStateRow>(
  'SELECT * FROM checkout_event_states($1::jsonb)',
  asJson,
  (e) => e.key,
  (row) => row.key,
);

/** The row as planEvent takes it; `orderTaken`: an earlier write of the event was refused for it. */
function eventStateOf(row: EventStateRow | null, orderTaken: boolean): EventState {
  return {
    done: row?.done_outcome ? { outcome: row.done_outcome, reasonCode: row.done_reason } : null,
    pendingForOrder: row?.pending_for_order ?? 0,
    orderOwner: row?.o_user ?? null,
    reservation: row?.r_id
      ? {
          id: row.r_id,
          status: row.r_status as ReservationState,
          refunded: Boolean(row.r_refunded),
          userId: row.r_user as string,
          orderId: row.r_order as string,
        }
      : null,
    coupon: row?.c_id
      ? {
          id: row.c_id,
          status: row.c_status as CouponState,
          expiresAt: new Date(row.c_expires as Date),
          reservationId: row.c_reservation,
          restoreOnRefund: Boolean(row.restore_on_refund),
        }
      : null,
    orderTaken,
  };
}

type EventWritten = { key: string; outcome: string; reservation: Record<string, unknown> | null };

/** The decisions about the events of one turn, applied by one call of apply_checkout_events. */
const writeEvent = batchedQuery<EventWrite, EventWritten>(
  'SELECT key, outcome, reservation FROM apply_checkout_events($1::jsonb)',
  asJson,
  (e) => e.key,
  (row) => row.key,
);

async function earlierOutcome(db: Sequelize, event: CheckoutEvent): Promise<CheckoutOutcome> {
  const [row] = await db.query<{ outcome: string; reason_code: string | null }>(
    'SELECT outcome, reason_code FROM processed_events WHERE source = $1 AND event_id = $2',
    {
      bind: [event.source, event.eventId],
      type: QueryTypes.SELECT,
    },
  );
  return { kind: 'duplicate', outcome: row?.outcome ?? 'APPLIED', reasonCode: row?.reason_code ?? null };
}

/**
 * Applies one payment event (or a confirm or cancel) exactly once in effect: its id is recorded in
 * processed_events by the same statement that makes the change, so a redelivery finds the row and
 * stops. The plan is made on the rows as read; the write takes effect only if they are unchanged.
 * Conflicts (a late payment for a coupon now held by another order) are recorded, never applied.
 * `now`: the time to decide at; the clock's, read again for each decision, when not given.
 */
export async function applyCheckoutEvent(deps: PaymentEventDeps, event: CheckoutEvent, now?: Date): Promise<CheckoutOutcome> {
  const key = eventKey(event);
  let orderTaken = false;
  for (let decision = 0; decision < MAX_DECISIONS; decision += 1) {
    const at = now ?? new Date();
    const row = await readEventState(deps.db, {
      key,
      source: event.source,
      eventId: event.eventId,
      reservationId: event.reservationId ?? null,
      orderId: event.orderId ?? null,
      userId: event.userId ?? null,
    });
    const plan = planEvent(eventStateOf(row, orderTaken), event, at);
    if (plan.kind === 'duplicate') {
      if (plan.invalidate !== null) await invalidateUserCoupons([plan.invalidate]);
      return { kind: 'duplicate', outcome: plan.outcome, reasonCode: plan.reasonCode };
    }
    if (plan.kind === 'wait') return { kind: 'wait', why: plan.why };

    const written = await writeEvent(deps.db, plan.write);
    if (written?.outcome === 'stale') continue;
    if (written?.outcome === 'uq_reservations_live_order') {
      orderTaken = true; // decide again: the late payment is now a conflict
      continue;
    }
    if (written?.outcome === 'duplicate') return earlierOutcome(deps.db, event);
    if (written?.outcome !== 'done') throw new Error(`apply_checkout_events answered ${written?.outcome ?? 'nothing'} for ${key}`);
    const reservation = written.reservation ? reservationFromJson(written.reservation) : null;
    const { payment } = plan;
    if (payment.action === 'none') return { kind: 'ignored', conflict: payment.conflict, reason: payment.reason, reservation };
    await invalidateUserCoupons([(reservation as Reservation).userId]);
    return { kind: 'applied', action: payment.action, reservation: reservation as Reservation };
  }
  throw new Error(`the reservation of ${key} changed under ${MAX_DECISIONS} decisions in a row`);
}

/**
 * What an applied checkout event leaves in the logs, metrics and alerts: one line per event, a used
 * coupon noted for coupon_coupons_used_total, a payment conflict counted and raised as an alert. For
 * the worker, which applies the events of jobs, and the bridge, which applies payments in place.
 */
export function reportCheckoutOutcome(log: Logger, what: string, outcome: SettledCheckoutOutcome): void {
  switch (outcome.kind) {
    case 'applied':
      log.info(
        { action: outcome.action, reservationId: outcome.reservation.id, couponId: outcome.reservation.couponId },
        `${what} applied`,
      );
      if (outcome.action === 'confirm' || outcome.action === 'confirm-late') noteCouponUsed(outcome.reservation.couponId);
      return;
    case 'ignored':
      if (outcome.conflict) {
        paymentConflictsTotal.inc();
        raiseAlert(
          log,
          'PAYMENT_CONFLICT',
          { code: outcome.reason.code, reservationId: outcome.reservation?.id, couponId: outcome.reservation?.couponId },
          'warn',
          `payment conflict: ${outcome.reason.message}`,
        );
      } else {
        log.info({ code: outcome.reason.code, reservationId: outcome.reservation?.id }, `${what} changed nothing`);
      }
      return;
    case 'duplicate':
      log.info({ earlierOutcome: outcome.outcome }, `${what} already processed; nothing done`);
  }
}
