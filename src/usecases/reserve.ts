// Reserve a coupon for an order. The coupon is read without locks, the rules decide
// (src/domain/checkout-rules.ts), and the decision is written as a compare-and-set by reserve_coupons
// (src/storage/sql/reserve_coupons.sql), batched with the other reserves of the same turn: it takes
// effect only if the coupon is still as read, else it is read and decided again. Lock order: every
// write that changes a reservation locks its coupon row first; one order everywhere means no
// deadlocks.
import { randomUUID } from 'node:crypto';
import type { Sequelize } from 'sequelize';
import { reason, type Reason } from '../core/errors';
import { asJson, batchedQuery } from '../storage/batched-query';
import { readCoupon, ruleOf, type CouponRow } from '../storage/checkout-coupon';
import { isSameReserveRequest, usability, type Usability } from '../domain/checkout-rules';
import { Reservation, reservationFromJson } from '../storage/reservation';
import { invalidateUserCoupons } from '../storage/cache/user-coupon-cache';

export interface ReserveDeps {
  db: Sequelize;
}

export interface ReserveInput {
  couponId: string;
  userId: string;
  orderId: string;
  orderAmount: number;
  /** The user's Idempotency-Key (reserveRequestId): a rerun, or a replay, finds the reservation it made. */
  requestId: string;
  /** The body's digest (reserveFingerprint): another body under the same request id is refused (I8). */
  fingerprint: string;
  ttlSeconds: number;
  now?: Date;
}

export type ReserveOutcome =
  | { kind: 'reserved'; reservation: Reservation; replay: boolean }
  /** `boundTo`: for IDEMPOTENCY_KEY_REUSED, the reservation the key made. */
  | { kind: 'refused'; reason: Reason; boundTo?: Reservation };

type ReserveRow = { req: string; outcome: string; reservation: Record<string, unknown> | null };

/** The reservations decided in one turn, written by one call of reserve_coupons (src/storage/sql). */
const writeReservation = batchedQuery<{ req: string } & Record<string, unknown>, ReserveRow>(
  'SELECT req, outcome, reservation FROM reserve_coupons($1::jsonb)',
  asJson,
  (item) => item.req,
  (row) => row.req,
);

/** How often a decision is made again when the rows changed between the read and the write. */
const MAX_DECISIONS = 5;

/** The refusals reserve_coupons names by their constraint. */
const REFUSED_BY: Record<string, Reason['code']> = {
  uq_reservations_pending_coupon: 'COUPON_NOT_AVAILABLE',
  uq_reservations_live_order: 'ORDER_ALREADY_HAS_COUPON',
  fk_reservations_order_owner: 'ORDER_NOT_OWNED',
};

/** A reservation its request id made before: the answer for the same body, a refusal for another (I8). */
async function answerEarlier(input: ReserveInput, earlier: Reservation): Promise<ReserveOutcome> {
  const made = {
    couponId: earlier.couponId,
    orderId: earlier.orderId,
    orderAmount: earlier.orderAmount,
    fingerprint: earlier.requestFingerprint ?? null,
  };
  if (!isSameReserveRequest(made, input)) {
    return {
      kind: 'refused',
      reason: reason('IDEMPOTENCY_KEY_REUSED', 'This Idempotency-Key reserved a coupon for another request.'),
      boundTo: earlier,
    };
  }
  // The earlier run may have died before invalidating.
  await invalidateUserCoupons([earlier.userId]);
  return { kind: 'reserved', reservation: earlier, replay: true };
}

/**
 * A coupon the rules refuse: the answer is still a reservation when this request made it before,
 * or when the coupon is reserved for this very order and amount already (another key, same ask).
 */
async function answerUnusable(input: ReserveInput, coupon: CouponRow | null, refusal: Reason): Promise<ReserveOutcome> {
  const earlier = await Reservation.findOne({ where: { requestId: input.requestId } });
  if (earlier) return answerEarlier(input, earlier);
  if (coupon?.status === 'RESERVED' && coupon.user_id === input.userId && coupon.order_id === input.orderId && coupon.reservation_id) {
    const live = await Reservation.findByPk(coupon.reservation_id);
    if (live?.status === 'PENDING' && live.orderAmount === input.orderAmount) return { kind: 'reserved', reservation: live, replay: true };
  }
  return { kind: 'refused', reason: refusal };
}

/**
 * Moves an ISSUED coupon to RESERVED for an order. The coupon is read, the rules decide
 * (usability, discount), and the write takes effect only if the coupon is still ISSUED, valid and
 * the user's; otherwise it is read and decided again. Postgres refuses whatever happens above it:
 * a second PENDING reservation of the coupon (I4), a second live coupon on the order, and an order
 * that another user reserved on first (I10).
 */
export async function reserveCoupon(deps: ReserveDeps, input: ReserveInput): Promise<ReserveOutcome> {
  for (let decision = 0; decision < MAX_DECISIONS; decision += 1) {
    const now = input.now ?? new Date();
    const coupon = await readCoupon(deps.db, input.couponId);
    // Someone else's coupon reads as missing: its existence is not this user's business.
    const verdict: Usability =
      !coupon || coupon.user_id !== input.userId
        ? { usable: false, discountAmount: 0, reason: reason('COUPON_NOT_FOUND') }
        : usability({ status: coupon.status, expiresAt: coupon.expires_at }, ruleOf(coupon), input.orderAmount, now);
    if (!verdict.usable) return answerUnusable(input, coupon, verdict.reason);
    const written = await writeReservation(deps.db, {
      req: input.requestId,
      id: randomUUID(),
      coupon: input.couponId,
      user: input.userId,
      order: input.orderId,
      amount: input.orderAmount,
      discount: verdict.discountAmount,
      fingerprint: input.fingerprint,
      at: now.toISOString(),
      expires: new Date(now.getTime() + input.ttlSeconds * 1000).toISOString(),
    });
    const refusal = REFUSED_BY[written?.outcome ?? ''];
    if (refusal) return { kind: 'refused', reason: reason(refusal) };
    switch (written?.outcome) {
      case 'reserved':
        await invalidateUserCoupons([input.userId]);
        return { kind: 'reserved', reservation: reservationFromJson(written.reservation ?? {}), replay: false };
      case 'duplicate-request':
        return answerEarlier(input, reservationFromJson(written.reservation ?? {}));
      case 'stale':
        continue; // the coupon changed since it was read: decide again on what it is now
      default:
        throw new Error(`reserve_coupons answered ${written?.outcome ?? 'nothing'} for ${input.requestId}`);
    }
  }
  throw new Error(`coupon ${input.couponId} changed under ${MAX_DECISIONS} decisions in a row`);
}
