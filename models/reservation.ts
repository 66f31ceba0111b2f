// The reservations table and the checkout transactions: reserve a coupon for an order, apply a
// payment (or an admin's confirm, or a user's cancel), and time out what nobody paid for.
//
// Lock order: every transaction that changes a reservation first locks its coupon row (SELECT ...
// FOR UPDATE), then reads and writes the reservation. One order everywhere means no deadlocks, and
// whoever holds the coupon row sees the reservation as it is.
import { randomUUID } from 'node:crypto';
import {
  DataTypes,
  Model,
  QueryTypes,
  type CreationOptional,
  type InferAttributes,
  type InferCreationAttributes,
  type Sequelize,
  type Transaction,
} from 'sequelize';
import { reason, type Reason } from '../core/errors';
import { planPayment, usability, type CouponState, type DiscountRule, type PaymentEventType, type PaymentPlan, type ReservationState } from './checkout-rules';

export class Reservation extends Model<InferAttributes<Reservation>, InferCreationAttributes<Reservation>> {
  declare id: string;
  declare couponId: string;
  declare userId: string;
  declare orderId: string;
  declare orderAmount: number;
  declare discountAmount: number;
  declare status: CreationOptional<ReservationState>;
  declare requestId: string;
  declare expiresAt: Date;
  declare endedAt: CreationOptional<Date | null>;
  declare endReason: CreationOptional<string | null>;
  declare refundedAt: CreationOptional<Date | null>;
  declare createdAt: CreationOptional<Date>;
  declare updatedAt: CreationOptional<Date>;
}

const money = (attribute: 'orderAmount' | 'discountAmount', field: string) => ({
  type: DataTypes.BIGINT,
  allowNull: false,
  field,
  get(this: Reservation) {
    return Number(this.getDataValue(attribute));
  },
});

export function initReservationModel(db: Sequelize): void {
  Reservation.init(
    {
      id: { type: DataTypes.TEXT, primaryKey: true },
      couponId: { type: DataTypes.TEXT, allowNull: false, field: 'coupon_id' },
      userId: { type: DataTypes.TEXT, allowNull: false, field: 'user_id' },
      orderId: { type: DataTypes.TEXT, allowNull: false, field: 'order_id' },
      orderAmount: money('orderAmount', 'order_amount'),
      discountAmount: money('discountAmount', 'discount_amount'),
      status: { type: DataTypes.TEXT, allowNull: false, defaultValue: 'PENDING' },
      requestId: { type: DataTypes.TEXT, allowNull: false, field: 'request_id' },
      expiresAt: { type: DataTypes.DATE, allowNull: false, field: 'expires_at' },
      endedAt: { type: DataTypes.DATE, allowNull: true, field: 'ended_at' },
      endReason: { type: DataTypes.TEXT, allowNull: true, field: 'end_reason' },
      refundedAt: { type: DataTypes.DATE, allowNull: true, field: 'refunded_at' },
      createdAt: { type: DataTypes.DATE, field: 'created_at' },
      updatedAt: { type: DataTypes.DATE, field: 'updated_at' },
    },
    { sequelize: db, tableName: 'reservations', underscored: true, timestamps: true },
  );
}

/** The result of a reserve job, as SPEC §5 words it. */
export interface ReservationResult {
  reservationId: string;
  couponId: string;
  orderId: string;
  discountAmount: number;
  expiresAt: string;
}

export function reservationResult(r: Reservation): ReservationResult {
  return { reservationId: r.id, couponId: r.couponId, orderId: r.orderId, discountAmount: r.discountAmount, expiresAt: r.expiresAt.toISOString() };
}

/** A reservation as the API shows it after a cancel, confirm or payment. */
export function reservationView(r: Reservation) {
  return {
    ...reservationResult(r),
    userId: r.userId,
    orderAmount: r.orderAmount,
    status: r.status,
    ...(r.endedAt && { endedAt: r.endedAt.toISOString() }),
    ...(r.endReason && { endReason: r.endReason }),
    ...(r.refundedAt && { refundedAt: r.refundedAt.toISOString() }),
    createdAt: r.createdAt.toISOString(),
  };
}
export type ReservationView = ReturnType<typeof reservationView>;

/** A coupon row locked for a checkout change, with the rules of its policy. */
interface LockedCoupon {
  id: string;
  user_id: string;
  status: CouponState;
  expires_at: Date;
  reservation_id: string | null;
  discount_type: DiscountRule['type'];
  discount_value: string;
  max_discount_amount: string | null;
  min_order_amount: string | null;
  restore_on_refund: boolean;
}

const LOCK_COUPON = `
  SELECT c.id, c.user_id, c.status, c.expires_at, c.reservation_id,
         p.discount_type, p.discount_value, p.max_discount_amount, p.min_order_amount, p.restore_on_refund
    FROM coupons c JOIN coupon_policies p ON p.id = c.policy_id
   WHERE c.id = $1
     FOR UPDATE OF c`;

async function lockCoupon(db: Sequelize, couponId: string, tx: Transaction): Promise<LockedCoupon | null> {
  const rows = await db.query<LockedCoupon>(LOCK_COUPON, { bind: [couponId], type: QueryTypes.SELECT, transaction: tx });
  return rows[0] ?? null;
}

function ruleOf(c: LockedCoupon): DiscountRule {
  const num = (v: string | null) => (v === null ? null : Number(v));
  return { type: c.discount_type, value: Number(c.discount_value), maxDiscountAmount: num(c.max_discount_amount), minOrderAmount: num(c.min_order_amount) };
}

/** A coupon as POST /coupons/validate needs it: its holder, state and discount rule. A plain read. */
export async function readCouponForCheckout(
  db: Sequelize,
  couponId: string,
): Promise<{ userId: string; status: CouponState; expiresAt: Date; rule: DiscountRule } | null> {
  const rows = await db.query<LockedCoupon>(LOCK_COUPON.replace('FOR UPDATE OF c', ''), { bind: [couponId], type: QueryTypes.SELECT });
  const c = rows[0];
  return c ? { userId: c.user_id, status: c.status, expiresAt: new Date(c.expires_at), rule: ruleOf(c) } : null;
}

/** The name of the constraint a Postgres error reports, through Sequelize's wrapping. */
export function violatedConstraint(error: unknown): string | undefined {
  const e = error as { original?: { constraint?: string }; parent?: { constraint?: string } } | null;
  return e?.original?.constraint ?? e?.parent?.constraint;
}

export interface ReserveInput {
  couponId: string;
  userId: string;
  orderId: string;
  orderAmount: number;
  /** The reserve job: a rerun or a re-added job finds the reservation it made. */
  requestId: string;
  ttlSeconds: number;
  now?: Date;
}

export type ReserveOutcome = { kind: 'reserved'; reservation: Reservation; replay: boolean } | { kind: 'refused'; reason: Reason };

/**
 * Moves an ISSUED coupon to RESERVED for an order, in one transaction under the coupon's row lock.
 * The checks are those of POST /coupons/validate (models/checkout-rules.ts); the partial unique index
 * on PENDING reservations refuses a second one whatever happens above it (I4).
 */
export async function reserveCoupon(db: Sequelize, input: ReserveInput): Promise<ReserveOutcome> {
  const now = input.now ?? new Date();
  try {
    return await db.transaction(async (tx): Promise<ReserveOutcome> => {
      const coupon = await lockCoupon(db, input.couponId, tx);
      // Someone else's coupon reads as missing: its existence is not this user's business.
      if (!coupon || coupon.user_id !== input.userId) return { kind: 'refused', reason: reason('COUPON_NOT_FOUND') };
      const verdict = usability({ status: coupon.status, expiresAt: coupon.expires_at }, ruleOf(coupon), input.orderAmount, now);
      if (!verdict.usable) {
        // Reserved already by this very request (a rerun after its commit): that is the answer.
        const earlier = await Reservation.findOne({ where: { requestId: input.requestId }, transaction: tx });
        if (earlier) return { kind: 'reserved', reservation: earlier, replay: true };
        return { kind: 'refused', reason: verdict.reason };
      }
      const reservation = await Reservation.create(
        {
          id: randomUUID(),
          couponId: input.couponId,
          userId: input.userId,
          orderId: input.orderId,
          orderAmount: input.orderAmount,
          discountAmount: verdict.discountAmount,
          requestId: input.requestId,
          expiresAt: new Date(now.getTime() + input.ttlSeconds * 1000),
        },
        { transaction: tx },
      );
      await db.query(
        `UPDATE coupons SET status = 'RESERVED', reserved_at = $2, order_id = $3, reservation_id = $4
          WHERE id = $1 AND status = 'ISSUED'`,
        { bind: [input.couponId, now, input.orderId, reservation.id], type: QueryTypes.UPDATE, transaction: tx },
      );
      return { kind: 'reserved', reservation, replay: false };
    });
  } catch (error) {
    const constraint = violatedConstraint(error);
    if (constraint === 'uq_reservations_request') {
      // The same request reserved in a concurrent run that committed first.
      const earlier = await Reservation.findOne({ where: { requestId: input.requestId } });
      if (earlier) return { kind: 'reserved', reservation: earlier, replay: true };
    }
    if (constraint === 'uq_reservations_pending_coupon') return { kind: 'refused', reason: reason('COUPON_NOT_AVAILABLE') };
    throw error;
  }
}

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
  now?: Date;
}

export type CheckoutOutcome =
  | { kind: 'applied'; action: Exclude<PaymentPlan['action'], 'none' | 'wait'>; reservation: Reservation }
  | { kind: 'ignored'; conflict: boolean; reason: Reason; reservation: Reservation | null }
  | { kind: 'duplicate'; outcome: string; reasonCode: string | null }
  | { kind: 'wait'; why: string };

/** Thrown inside the transaction to roll it back (and not record the event) when it must wait. */
class NotYet extends Error {}

/**
 * Applies one payment event (or a confirm or cancel) exactly once in effect: its id is recorded in
 * processed_events in the same transaction as the change, so a redelivery finds the row and stops.
 * Conflicts (a late payment for a coupon now held by another order) are recorded, never applied.
 */
export async function applyCheckoutEvent(db: Sequelize, event: CheckoutEvent): Promise<CheckoutOutcome> {
  const now = event.now ?? new Date();
  try {
    return await db.transaction(async (tx): Promise<CheckoutOutcome> => {
      const claimed = await db.query(
        `INSERT INTO processed_events (source, event_id, type, order_id, reservation_id, outcome)
         VALUES ($1, $2, $3, $4, $5, 'APPLIED') ON CONFLICT DO NOTHING RETURNING event_id`,
        { bind: [event.source, event.eventId, event.type, event.orderId ?? null, event.reservationId ?? null], type: QueryTypes.SELECT, transaction: tx },
      );
      if (claimed.length === 0) {
        const [earlier] = await db.query<{ outcome: string; reason_code: string | null }>(
          'SELECT outcome, reason_code FROM processed_events WHERE source = $1 AND event_id = $2',
          { bind: [event.source, event.eventId], type: QueryTypes.SELECT, transaction: tx },
        );
        return { kind: 'duplicate', outcome: earlier?.outcome ?? 'APPLIED', reasonCode: earlier?.reason_code ?? null };
      }
      const record = async (outcome: 'APPLIED' | 'IGNORED' | 'CONFLICT', why: Reason | null, reservationId: string | null) => {
        await db.query(
          `UPDATE processed_events SET outcome = $3, reason_code = $4, detail = $5, reservation_id = COALESCE(reservation_id, $6)
            WHERE source = $1 AND event_id = $2`,
          { bind: [event.source, event.eventId, outcome, why?.code ?? null, why?.message ?? null, reservationId], type: QueryTypes.UPDATE, transaction: tx },
        );
      };

      const target = await findTarget(db, event, tx);
      if (!target) {
        const why = reason('RESERVATION_NOT_FOUND', 'No reservation matches this event.');
        await record('IGNORED', why, null);
        return { kind: 'ignored', conflict: false, reason: why, reservation: null };
      }
      const coupon = await lockCoupon(db, target.couponId, tx);
      const reservation = await Reservation.findByPk(target.id, { transaction: tx });
      if (!coupon || !reservation) throw new Error(`reservation ${target.id} or its coupon vanished`);
      if (event.ownerId !== undefined && reservation.userId !== event.ownerId) {
        const why = reason('RESERVATION_NOT_FOUND');
        await record('IGNORED', why, null);
        return { kind: 'ignored', conflict: false, reason: why, reservation: null };
      }
      if (event.orderId !== undefined && reservation.orderId !== event.orderId) {
        const why = reason('RESERVATION_NOT_FOUND', `Reservation ${reservation.id} is for another order.`);
        await record('IGNORED', why, reservation.id);
        return { kind: 'ignored', conflict: false, reason: why, reservation };
      }

      const plan = planPayment(
        event.type,
        { id: reservation.id, status: reservation.status, refundedAt: reservation.refundedAt },
        { status: coupon.status, expiresAt: coupon.expires_at, reservationId: coupon.reservation_id },
        { restoreOnRefund: coupon.restore_on_refund, now },
      );
      if (plan.action === 'wait') throw new NotYet(plan.why);
      if (plan.action === 'none') {
        await record(plan.conflict ? 'CONFLICT' : 'IGNORED', plan.reason, reservation.id);
        return { kind: 'ignored', conflict: plan.conflict, reason: plan.reason, reservation };
      }
      await carryOut(db, plan.action, reservation, event.endReason, now, tx);
      await record('APPLIED', null, reservation.id);
      await reservation.reload({ transaction: tx });
      return { kind: 'applied', action: plan.action, reservation };
    });
  } catch (error) {
    if (error instanceof NotYet) return { kind: 'wait', why: error.message };
    throw error;
  }
}

/** The reservation an event is about: the one it names, or its order's pending (else newest) one. */
async function findTarget(db: Sequelize, event: CheckoutEvent, tx: Transaction): Promise<{ id: string; couponId: string } | null> {
  const [row] = event.reservationId
    ? await db.query<{ id: string; coupon_id: string }>('SELECT id, coupon_id FROM reservations WHERE id = $1', {
        bind: [event.reservationId],
        type: QueryTypes.SELECT,
        transaction: tx,
      })
    : await db.query<{ id: string; coupon_id: string }>(
        `SELECT id, coupon_id FROM reservations WHERE order_id = $1
          ORDER BY (status = 'PENDING') DESC, created_at DESC LIMIT 1`,
        { bind: [event.orderId], type: QueryTypes.SELECT, transaction: tx },
      );
  return row ? { id: row.id, couponId: row.coupon_id } : null;
}

async function carryOut(
  db: Sequelize,
  action: Exclude<PaymentPlan['action'], 'none' | 'wait'>,
  r: Reservation,
  endReason: string,
  now: Date,
  tx: Transaction,
): Promise<void> {
  const run = (sql: string, bind: unknown[]) => db.query(sql, { bind, type: QueryTypes.UPDATE, transaction: tx });
  switch (action) {
    case 'confirm':
    case 'confirm-late':
      await run(`UPDATE reservations SET status = 'CONFIRMED', ended_at = COALESCE(ended_at, $2), end_reason = $3 WHERE id = $1`, [
        r.id,
        now,
        action === 'confirm' ? endReason : `${endReason}_LATE`,
      ]);
      await run(`UPDATE coupons SET status = 'USED', used_at = $2, order_id = $3, reservation_id = $4, reserved_at = COALESCE(reserved_at, $2) WHERE id = $1`, [
        r.couponId,
        now,
        r.orderId,
        r.id,
      ]);
      return;
    case 'release':
      await run(`UPDATE reservations SET status = 'CANCELLED', ended_at = $2, end_reason = $3 WHERE id = $1`, [r.id, now, endReason]);
      await run(`UPDATE coupons SET status = 'ISSUED', reserved_at = NULL, order_id = NULL, reservation_id = NULL WHERE id = $1 AND reservation_id = $2`, [
        r.couponId,
        r.id,
      ]);
      return;
    case 'restore':
      await run(`UPDATE reservations SET refunded_at = $2 WHERE id = $1`, [r.id, now]);
      await run(`UPDATE coupons SET status = 'ISSUED', reserved_at = NULL, used_at = NULL, order_id = NULL, reservation_id = NULL WHERE id = $1 AND reservation_id = $2`, [
        r.couponId,
        r.id,
      ]);
      return;
  }
}

export interface SweepReport {
  expired: number;
  released: number;
}

/**
 * Ends up to `limit` PENDING reservations whose time is up and gives their coupons back, in one
 * statement. Coupons are locked first (the lock order above) and those another transaction holds
 * are skipped for the next pass, so sweepers on many workers share the backlog without waiting.
 */
export async function expireDueReservations(db: Sequelize, limit: number): Promise<SweepReport> {
  const [row] = await db.query<{ expired: string; released: string }>(
    `WITH due AS (
       SELECT id, coupon_id FROM reservations
        WHERE status = 'PENDING' AND expires_at <= now()
        ORDER BY expires_at LIMIT $1
     ), locked AS (
       SELECT c.id FROM coupons c JOIN due ON due.coupon_id = c.id
        FOR UPDATE OF c SKIP LOCKED
     ), expired AS (
       UPDATE reservations r SET status = 'EXPIRED', ended_at = now(), end_reason = 'TIMEOUT'
         FROM due JOIN locked ON locked.id = due.coupon_id
        WHERE r.id = due.id AND r.status = 'PENDING'
        RETURNING r.id, r.coupon_id
     ), released AS (
       UPDATE coupons c SET status = 'ISSUED', reserved_at = NULL, order_id = NULL, reservation_id = NULL
         FROM expired
        WHERE c.id = expired.coupon_id AND c.status = 'RESERVED' AND c.reservation_id = expired.id
        RETURNING c.id
     )
     SELECT (SELECT count(*) FROM expired) AS expired, (SELECT count(*) FROM released) AS released`,
    { bind: [limit], type: QueryTypes.SELECT },
  );
  return { expired: Number(row?.expired ?? 0), released: Number(row?.released ?? 0) };
}
