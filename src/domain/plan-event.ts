// What one payment event (or an admin's confirm, or a user's cancel) does, decided on the state it
// is about as read: planEvent(state, event, now) is a pure function. The use case
// (src/usecases/payment-event.ts) reads the state, asks planEvent, and carries the plan out: it answers
// a duplicate or a wait without writing, or hands the plan's write to apply_checkout_events, a
// compare-and-set that takes effect only on the rows as read (`expect`). No I/O here.
import { reason } from '../core/errors';
import {
  foreignPayer,
  planPayment,
  type CouponState,
  type PaymentEventType,
  type PaymentPlan,
  type ReservationState,
} from './checkout-rules';

/** What a payment, confirm or cancel asks for. `source` + `eventId` is recorded once (I5). */
export interface CheckoutEvent {
  source: string;
  eventId: string;
  type: PaymentEventType;
  orderId?: string;
  reservationId?: string;
  /** Recorded as the reservation's end_reason when this event ends it. */
  endReason: string;
  /** Set for a user's own request: a reservation of anyone else reads as missing. */
  ownerId?: string;
  /** The user a payment event names: an order's reservations are narrowed to theirs. */
  userId?: string;
  /** The event has waited long enough: what still does not apply is recorded as ignored. */
  noWait?: boolean;
}

/** The event's key among the events of one batch, and in processed_events (`source` + `eventId`). */
export const eventKey = (event: Pick<CheckoutEvent, 'source' | 'eventId'>) => `${event.source}/${event.eventId}`;

/**
 * The state an event is about, as one read found it (checkout_event_states), and what an earlier
 * write of the same event learnt.
 */
export interface EventState {
  /** The event was processed before (processed_events): what it did then. */
  done: { outcome: string; reasonCode: string | null } | null;
  /**
   * The order's PENDING reservations (of the event's user, when it names one) when the event names
   * no reservation; 0 otherwise. More than one exists only in rows from before one coupon per order.
   */
  pendingForOrder: number;
  /** The user who owns the event's order (who first reserved on it); null when nobody did. */
  orderOwner: string | null;
  /** The reservation the event names, else its order's live, else newest, one (of the event's user, when it names one). */
  reservation: { id: string; status: ReservationState; refunded: boolean; userId: string; orderId: string } | null;
  /** That reservation's coupon, with its policy's refund rule. */
  coupon: { id: string; status: CouponState; expiresAt: Date; reservationId: string | null; restoreOnRefund: boolean } | null;
  /**
   * An earlier write of this event was refused by Postgres because its order holds another live
   * coupon now (uq_reservations_live_order): a late confirm is then a conflict.
   */
  orderTaken: boolean;
}

/** A plan that settles the event now: recorded, and applied unless its action is `none`. */
export type SettledPlan = Exclude<PaymentPlan, { action: 'wait' }>;

/** One event as apply_checkout_events takes it (src/storage/sql/apply_checkout_events.sql). */
export interface EventWrite {
  key: string;
  source: string;
  eventId: string;
  type: PaymentEventType;
  orderId: string | null;
  /** The reservation and coupon the write may touch; null when the event matched none. */
  reservationId: string | null;
  couponId: string | null;
  outcome: 'APPLIED' | 'IGNORED' | 'CONFLICT';
  reasonCode: string | null;
  detail: string | null;
  action: SettledPlan['action'];
  endReason: string;
  at: string;
  /** The rows as read: the write takes effect only while they are still so; else it answers `stale`. */
  expect: { reservation: ReservationState; refunded: boolean; coupon: CouponState; couponReservation: string | null } | null;
}

export type EventPlan =
  /** Processed before: answer what it did. `invalidate`: the user whose cached coupon list the first run may have left stale. */
  | { kind: 'duplicate'; outcome: string; reasonCode: string | null; invalidate: string | null }
  /** Not applicable yet (a refund ahead of its payment): try again later; nothing is written. */
  | { kind: 'wait'; why: string }
  /** Write `write`; `payment` is what it does. */
  | { kind: 'write'; payment: SettledPlan; write: EventWrite };

type Found = { reservation: NonNullable<EventState['reservation']>; coupon: NonNullable<EventState['coupon']> };

/**
 * What an event does to the rows as read: the plan, and the reservation it is about (null: none it
 * may touch).
 */
function decide(state: EventState, event: CheckoutEvent, now: Date): { plan: PaymentPlan; found: Found | null } {
  // Someone who does not own the order touches nothing of it (I10).
  const foreign = foreignPayer(event.userId, state.orderOwner);
  if (foreign) return { plan: foreign, found: null };
  if (state.pendingForOrder > 1) {
    // Rows from before one coupon per order: never guess which of them a payment paid for.
    const message = `Order ${event.orderId} has ${state.pendingForOrder} PENDING reservations; the event must name its reservationId.`;
    return { plan: { action: 'none', conflict: true, reason: reason('RESERVATION_NOT_FOUND', message) }, found: null };
  }
  const { reservation, coupon } = state;
  const found =
    reservation && coupon && !(event.ownerId !== undefined && reservation.userId !== event.ownerId) ? { reservation, coupon } : null;
  if (!found)
    return {
      plan: { action: 'none', conflict: false, reason: reason('RESERVATION_NOT_FOUND', 'No reservation matches this event.') },
      found,
    };
  if (event.orderId !== undefined && found.reservation.orderId !== event.orderId) {
    return {
      plan: {
        action: 'none',
        conflict: false,
        reason: reason('RESERVATION_NOT_FOUND', `Reservation ${found.reservation.id} is for another order.`),
      },
      found,
    };
  }
  const plan = planPayment(
    event.type,
    { id: found.reservation.id, status: found.reservation.status, refundedAt: found.reservation.refunded ? now : null },
    { status: found.coupon.status, expiresAt: found.coupon.expiresAt, reservationId: found.coupon.reservationId },
    { restoreOnRefund: found.coupon.restoreOnRefund, now },
  );
  if (state.orderTaken && plan.action === 'confirm-late') {
    return {
      plan: {
        action: 'none',
        conflict: true,
        reason: reason(
          'ORDER_ALREADY_HAS_COUPON',
          'The payment completed after its reservation ended; the order holds another coupon now.',
        ),
      },
      found,
    };
  }
  return { plan, found };
}

/**
 * The plan of one event on the state it is about, at `now`: a duplicate to answer, a wait, or the
 * write that records it (and applies it, unless it changes nothing). Conflicts (a late payment for
 * a coupon now held by another order) are recorded, never applied.
 */
export function planEvent(state: EventState, event: CheckoutEvent, now: Date): EventPlan {
  if (state.done) {
    // Applied before: that run may have died before invalidating.
    const invalidate = state.done.outcome === 'APPLIED' ? (state.reservation?.userId ?? null) : null;
    return { kind: 'duplicate', outcome: state.done.outcome, reasonCode: state.done.reasonCode, invalidate };
  }
  const { plan: decided, found } = decide(state, event, now);
  let payment: SettledPlan;
  if (decided.action === 'wait') {
    if (!event.noWait) return { kind: 'wait', why: decided.why };
    payment = { action: 'none', conflict: false, reason: reason('RESERVATION_NOT_PENDING', `Gave up waiting: ${decided.why}.`) };
  } else {
    payment = decided;
  }
  const write: EventWrite = {
    key: eventKey(event),
    source: event.source,
    eventId: event.eventId,
    type: event.type,
    orderId: found?.reservation.orderId ?? event.orderId ?? null,
    reservationId: found?.reservation.id ?? null,
    couponId: found?.coupon.id ?? null,
    outcome: payment.action === 'none' ? (payment.conflict ? 'CONFLICT' : 'IGNORED') : 'APPLIED',
    reasonCode: payment.action === 'none' ? payment.reason.code : null,
    detail: payment.action === 'none' ? payment.reason.message : null,
    action: payment.action,
    endReason: payment.action === 'confirm-late' ? `${event.endReason}_LATE` : event.endReason,
    at: now.toISOString(),
    expect: found && {
      reservation: found.reservation.status,
      refunded: found.reservation.refunded,
      coupon: found.coupon.status,
      couponReservation: found.coupon.reservationId,
    },
  };
  return { kind: 'write', payment, write };
}
