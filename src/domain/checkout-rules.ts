// Checkout rules as pure functions over plain data: the discount an order gets, whether a coupon can
// be reserved, and what a payment event does to a reservation and its coupon. No I/O here; the
// use cases (src/usecases/) load the rows, ask these functions (a payment event through planEvent,
// plan-event.ts), and write what they answer.
import { reason, type Reason } from '../core/errors';

export interface DiscountRule {
  type: 'FIXED' | 'PERCENTAGE';
  /** FIXED: an amount in the smallest currency unit; PERCENTAGE: 1..100. */
  value: number;
  maxDiscountAmount: number | null;
  minOrderAmount: number | null;
}

/**
 * The discount on an order of `orderAmount` (an integer in the smallest currency unit). A percentage
 * rounds down to the unit, the cap bounds it, and no discount exceeds the order amount.
 */
export function discountFor(rule: DiscountRule, orderAmount: number): number {
  if (!Number.isSafeInteger(orderAmount) || orderAmount < 0)
    throw new RangeError(`order amount ${orderAmount} is not a non-negative integer`);
  let amount = rule.type === 'FIXED' ? rule.value : Math.floor((orderAmount * rule.value) / 100);
  if (rule.maxDiscountAmount !== null) amount = Math.min(amount, rule.maxDiscountAmount);
  return Math.max(0, Math.min(amount, orderAmount));
}

export type CouponState = 'ISSUED' | 'RESERVED' | 'USED' | 'EXPIRED';

export interface CouponFacts {
  status: CouponState;
  expiresAt: Date;
}

export type Usability = { usable: true; discountAmount: number } | { usable: false; discountAmount: 0; reason: Reason };

/** Whether a coupon can be reserved for an order of `orderAmount` at `now`, and for how much. */
export function usability(coupon: CouponFacts, rule: DiscountRule, orderAmount: number, now: Date): Usability {
  const refuse = (code: Parameters<typeof reason>[0]): Usability => ({ usable: false, discountAmount: 0, reason: reason(code) });
  if (coupon.status === 'EXPIRED' || (coupon.status === 'ISSUED' && coupon.expiresAt <= now)) return refuse('COUPON_EXPIRED');
  if (coupon.status !== 'ISSUED') return refuse('COUPON_NOT_AVAILABLE');
  if (rule.minOrderAmount !== null && orderAmount < rule.minOrderAmount) return refuse('ORDER_AMOUNT_TOO_LOW');
  return { usable: true, discountAmount: discountFor(rule, orderAmount) };
}

export type ReservationState = 'PENDING' | 'CONFIRMED' | 'CANCELLED' | 'EXPIRED';

/** What a reserve asked for, as its reservation records it. */
export interface ReserveRequestFacts {
  couponId: string;
  orderId: string;
  orderAmount: number;
  /** The digest of the body sent under the Idempotency-Key; null on rows from before it was kept. */
  fingerprint: string | null;
}

/**
 * Whether the reservation a request id (a user's Idempotency-Key) made was made for this body: then
 * it is the answer (a replay); otherwise the key is reused for another body and refused (I8). Rows
 * without a fingerprint are compared by their own columns, which are that body.
 */
export function isSameReserveRequest(made: ReserveRequestFacts, asked: ReserveRequestFacts): boolean {
  if (made.fingerprint !== null && asked.fingerprint !== null) return made.fingerprint === asked.fingerprint;
  return made.couponId === asked.couponId && made.orderId === asked.orderId && made.orderAmount === asked.orderAmount;
}

export const PAYMENT_EVENT_TYPES = ['PAYMENT_COMPLETED', 'PAYMENT_FAILED', 'PAYMENT_CANCELLED', 'PAYMENT_REFUNDED'] as const;
export type PaymentEventType = (typeof PAYMENT_EVENT_TYPES)[number];

export interface ReservationFacts {
  id: string;
  status: ReservationState;
  refundedAt: Date | null;
}

export interface HeldCouponFacts extends CouponFacts {
  /** The reservation the coupon is reserved or used for, if any. */
  reservationId: string | null;
}

/** What a payment (or an admin's confirm, or a user's cancel) does. */
export type PaymentPlan =
  /** PENDING → CONFIRMED, coupon RESERVED → USED. */
  | { action: 'confirm' }
  /** A payment after the reservation ended: CANCELLED/EXPIRED → CONFIRMED, coupon ISSUED → USED. */
  | { action: 'confirm-late' }
  /** PENDING → CANCELLED, coupon RESERVED → ISSUED. */
  | { action: 'release' }
  /** A refund of a confirmed use: the coupon goes back to ISSUED. */
  | { action: 'restore' }
  /** Nothing changes; `conflict` marks a payment that could not take effect and must be looked at. */
  | { action: 'none'; conflict: boolean; reason: Reason }
  /** Not applicable yet (a refund that overtook its payment): try again later. */
  | { action: 'wait'; why: string };

const none = (code: Parameters<typeof reason>[0], message: string, conflict = false): PaymentPlan => ({
  action: 'none',
  conflict,
  reason: reason(code, message),
});

/**
 * An event that names a user (`payer`) other than its order's owner touches nothing of the order
 * (I10): recorded as a conflict. Null when the event may go on (no user named, nobody owns the
 * order yet, or the owner named).
 */
export function foreignPayer(payer: string | undefined, owner: string | null): PaymentPlan | null {
  if (payer === undefined || owner === null || payer === owner) return null;
  return none('ORDER_NOT_OWNED', `The event names user ${payer}, who does not own the order.`, true);
}

/**
 * The state machine of checkout. `coupon` is the coupon the reservation is for. Events of one order
 * can reach the workers out of order; every outcome below gives the same end state whichever of
 * COMPLETED, FAILED and CANCELLED comes first, and a REFUNDED that overtakes its COMPLETED waits
 * (the worker retries it; after a while it records it as having changed nothing).
 */
export function planPayment(
  type: PaymentEventType,
  reservation: ReservationFacts,
  coupon: HeldCouponFacts,
  opts: { restoreOnRefund: boolean; now: Date },
): PaymentPlan {
  const heldByThis = coupon.reservationId === reservation.id;
  switch (type) {
    case 'PAYMENT_COMPLETED': {
      if (reservation.status === 'CONFIRMED') return none('RESERVATION_NOT_PENDING', 'The reservation is already confirmed.');
      if (reservation.status === 'PENDING') return { action: 'confirm' };
      // Late: the reservation timed out or was released before the payment landed.
      if (coupon.status === 'ISSUED' && coupon.expiresAt > opts.now) return { action: 'confirm-late' };
      if (coupon.status === 'ISSUED' || coupon.status === 'EXPIRED') {
        return none('COUPON_EXPIRED', 'The payment completed after its reservation ended and the coupon has expired.', true);
      }
      return none(
        'COUPON_NOT_AVAILABLE',
        `The payment completed after its reservation ended; the coupon is ${coupon.status} for another order.`,
        true,
      );
    }
    case 'PAYMENT_FAILED':
    case 'PAYMENT_CANCELLED':
      if (reservation.status === 'PENDING') return { action: 'release' };
      return none('RESERVATION_NOT_PENDING', `The reservation is ${reservation.status}; nothing to release.`);
    case 'PAYMENT_REFUNDED': {
      // Not confirmed (yet): its payment may still be on its way, possibly as a late one; the
      // worker waits a while before it records the refund as one that changed nothing.
      if (reservation.status !== 'CONFIRMED')
        return { action: 'wait', why: `a refund arrived while the reservation is ${reservation.status}, before its payment was applied` };
      if (reservation.refundedAt !== null) return none('RESERVATION_NOT_PENDING', 'The reservation was already refunded.');
      if (!heldByThis || coupon.status !== 'USED') return none('COUPON_NOT_AVAILABLE', 'The coupon is not used by this reservation.', true);
      if (!opts.restoreOnRefund) return none('COUPON_NOT_AVAILABLE', 'The policy does not restore coupons on refund.');
      if (coupon.expiresAt <= opts.now) return none('COUPON_EXPIRED', 'The coupon has expired; it is not restored.');
      return { action: 'restore' };
    }
  }
}
