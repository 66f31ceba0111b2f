// Apply a payment event, or an admin's confirm, or a user's cancel, exactly once in effect. The
// state the event is about is read without locks (checkout_event_states), the rules decide
// (models/checkout-rules.ts), and the decision is written as a compare-and-set by
// apply_checkout_events (migrations 0006 and 0010), batched with the other events of the same turn:
// it takes effect only if the rows are still as read, else they are read and decided again. Lock
// order: every write that changes a reservation locks its coupon row first.
import { QueryTypes, type Sequelize } from 'sequelize';
import { reason, type Reason } from '../core/errors';
import { asJson, batchedQuery } from '../models/batched-query';
import {
  foreignPayer,
  planPayment,
  type CouponState,
  type PaymentEventType,
  type PaymentPlan,
  type ReservationState,
} from '../models/checkout-rules';
import { Reservation, reservationFromJson } from '../models/reservation';
import { invalidateUserCoupons } from '../models/user-coupon-cache';

export interface PaymentEventDeps {
  db: Sequelize;
}

/** How often a decision is made again when the rows changed between the read and the write. */
const MAX_DECISIONS = 5;

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
  now?: Date;
}

export type CheckoutOutcome =
  | { kind: 'applied'; action: Exclude<PaymentPlan['action'], 'none' | 'wait'>; reservation: Reservation }
  | { kind: 'ignored'; conflict: boolean; reason: Reason; reservation: Reservation | null }
  | { kind: 'duplicate'; outcome: string; reasonCode: string | null }
  | { kind: 'wait'; why: string };

interface EventState {
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

const readEventState = batchedQuery<EventRef, EventState>('SELECT * FROM checkout_event_states($1::jsonb)', asJson, (e) => e.key, (row) => row.key);

type EventWrite = { key: string; outcome: string; reservation: Record<string, unknown> | null };

/** The decisions about the events of one turn, applied by one call of apply_checkout_events. */
const writeEvent = batchedQuery<{ key: string } & Record<string, unknown>, EventWrite>(
  'SELECT key, outcome, reservation FROM apply_checkout_events($1::jsonb)',
  asJson,
  (e) => e.key,
  (row) => row.key,
);

async function earlierOutcome(db: Sequelize, event: CheckoutEvent): Promise<CheckoutOutcome> {
  const [row] = await db.query<{ outcome: string; reason_code: string | null }>('SELECT outcome, reason_code FROM processed_events WHERE source = $1 AND event_id = $2', {
    bind: [event.source, event.eventId],
    type: QueryTypes.SELECT,
  });
  return { kind: 'duplicate', outcome: row?.outcome ?? 'APPLIED', reasonCode: row?.reason_code ?? null };
}

/**
 * What an event does to the rows as read: the plan, and the reservation it is about (null: none it
 * may touch). `orderTaken`: Postgres refused a late confirm because the order holds another coupon.
 */
function decideEvent(event: CheckoutEvent, state: EventState | null, now: Date, orderTaken: boolean): { plan: PaymentPlan; found: EventState | null } {
  // Someone who does not own the order touches nothing of it (I10).
  const foreign = foreignPayer(event.userId, state?.o_user ?? null);
  if (foreign) return { plan: foreign, found: null };
  if ((state?.pending_for_order ?? 0) > 1) {
    // Rows from before one coupon per order: never guess which of them a payment paid for.
    const message = `Order ${event.orderId} has ${state?.pending_for_order} PENDING reservations; the event must name its reservationId.`;
    return { plan: { action: 'none', conflict: true, reason: reason('RESERVATION_NOT_FOUND', message) }, found: null };
  }
  const found = state?.r_id && state.c_id && !(event.ownerId !== undefined && state.r_user !== event.ownerId) ? state : null;
  if (!found) return { plan: { action: 'none', conflict: false, reason: reason('RESERVATION_NOT_FOUND', 'No reservation matches this event.') }, found };
  if (event.orderId !== undefined && found.r_order !== event.orderId) {
    return { plan: { action: 'none', conflict: false, reason: reason('RESERVATION_NOT_FOUND', `Reservation ${found.r_id} is for another order.`) }, found };
  }
  const plan = planPayment(
    event.type,
    { id: found.r_id as string, status: found.r_status as ReservationState, refundedAt: found.r_refunded ? now : null },
    { status: found.c_status as CouponState, expiresAt: new Date(found.c_expires as Date), reservationId: found.c_reservation },
    { restoreOnRefund: Boolean(found.restore_on_refund), now },
  );
  if (orderTaken && plan.action === 'confirm-late') {
    return { plan: { action: 'none', conflict: true, reason: reason('ORDER_ALREADY_HAS_COUPON', 'The payment completed after its reservation ended; the order holds another coupon now.') }, found };
  }
  return { plan, found };
}

/**
 * Applies one payment event (or a confirm or cancel) exactly once in effect: its id is recorded in
 * processed_events by the same statement that makes the change, so a redelivery finds the row and
 * stops. The rules decide on the rows as read; the write takes effect only if they are unchanged.
 * Conflicts (a late payment for a coupon now held by another order) are recorded, never applied.
 */
export async function applyCheckoutEvent(deps: PaymentEventDeps, event: CheckoutEvent): Promise<CheckoutOutcome> {
  const key = `${event.source}/${event.eventId}`;
  let orderTaken = false;
  for (let decision = 0; decision < MAX_DECISIONS; decision += 1) {
    const now = event.now ?? new Date();
    const state = await readEventState(deps.db, {
      key,
      source: event.source,
      eventId: event.eventId,
      reservationId: event.reservationId ?? null,
      orderId: event.orderId ?? null,
      userId: event.userId ?? null,
    });
    if (state?.done_outcome) {
      // Applied before: that run may have died before invalidating.
      if (state.done_outcome === 'APPLIED' && state.r_user) await invalidateUserCoupons([state.r_user]);
      return { kind: 'duplicate', outcome: state.done_outcome, reasonCode: state.done_reason };
    }

    const { plan: decided, found } = decideEvent(event, state, now, orderTaken);
    let plan = decided;
    if (plan.action === 'wait') {
      if (!event.noWait) return { kind: 'wait', why: plan.why };
      plan = { action: 'none', conflict: false, reason: reason('RESERVATION_NOT_PENDING', `Gave up waiting: ${plan.why}.`) };
    }

    const written = await writeEvent(deps.db, {
      key,
      source: event.source,
      eventId: event.eventId,
      type: event.type,
      orderId: found?.r_order ?? event.orderId ?? null,
      reservationId: found?.r_id ?? null,
      couponId: found?.c_id ?? null,
      outcome: plan.action === 'none' ? (plan.conflict ? 'CONFLICT' : 'IGNORED') : 'APPLIED',
      reasonCode: plan.action === 'none' ? plan.reason.code : null,
      detail: plan.action === 'none' ? plan.reason.message : null,
      action: plan.action,
      endReason: plan.action === 'confirm-late' ? `${event.endReason}_LATE` : event.endReason,
      at: now.toISOString(),
      expect: found && { reservation: found.r_status, refunded: Boolean(found.r_refunded), coupon: found.c_status, couponReservation: found.c_reservation },
    });
    if (written?.outcome === 'stale') continue;
    if (written?.outcome === 'uq_reservations_live_order') {
      orderTaken = true; // decide again: the late payment is now a conflict
      continue;
    }
    if (written?.outcome === 'duplicate') return earlierOutcome(deps.db, event);
    if (written?.outcome !== 'done') throw new Error(`apply_checkout_events answered ${written?.outcome ?? 'nothing'} for ${key}`);
    const reservation = written.reservation ? reservationFromJson(written.reservation) : null;
    if (plan.action === 'none') return { kind: 'ignored', conflict: plan.conflict, reason: plan.reason, reservation };
    await invalidateUserCoupons([(reservation as Reservation).userId]);
    return { kind: 'applied', action: plan.action, reservation: reservation as Reservation };
  }
  throw new Error(`the reservation of ${key} changed under ${MAX_DECISIONS} decisions in a row`);
}
