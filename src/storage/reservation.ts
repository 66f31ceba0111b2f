// The reservations table as a Sequelize model, the ways a reservation is shown (the result of a
// reserve job, the view after a cancel, confirm or payment), and a row as the checkout functions
// answer it made into a model. The checkout use cases that change reservations are in src/usecases/
// (reserve.ts, payment-event.ts, expire-reservations.ts); their rules in checkout-rules.ts and
// plan-event.ts.
import { DataTypes, Model, type CreationOptional, type InferAttributes, type InferCreationAttributes, type Sequelize } from 'sequelize';
import type { ReservationState, ReserveRequestFacts } from '../domain/checkout-rules';
import { batchedQuery } from './batched-query';
import type { z } from 'zod';
import type { ReservationResult, reservationViewSchema } from '../queues/results';

export class Reservation extends Model<InferAttributes<Reservation>, InferCreationAttributes<Reservation>> {
  declare id: string;
  declare couponId: string;
  declare userId: string;
  declare orderId: string;
  declare orderAmount: number;
  declare discountAmount: number;
  declare status: CreationOptional<ReservationState>;
  declare requestId: string;
  declare requestFingerprint: CreationOptional<string | null>;
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
      requestFingerprint: { type: DataTypes.TEXT, allowNull: true, field: 'request_fingerprint' },
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

export function reservationResult(r: Reservation): ReservationResult {
  return {
    reservationId: r.id,
    couponId: r.couponId,
    orderId: r.orderId,
    discountAmount: r.discountAmount,
    expiresAt: r.expiresAt.toISOString(),
  };
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

// The queue contract's schema (reservationViewSchema) says what reservationView writes, key for key:
// this fails to compile otherwise.
type Same<A, B> = [A, B, keyof A, keyof B] extends [B, A, keyof B, keyof A] ? true : never;
const sameAsReservationView: Same<z.infer<typeof reservationViewSchema>, ReservationView> = true;
void sameAsReservationView;

/** A reservations row as to_jsonb gives it (the checkout functions answer them so), made into a model instance. */
export function reservationFromJson(row: Record<string, unknown>): Reservation {
  const at = (v: unknown) => (v === null || v === undefined ? null : new Date(String(v)));
  return Reservation.build(
    {
      id: String(row.id),
      couponId: String(row.coupon_id),
      userId: String(row.user_id),
      orderId: String(row.order_id),
      orderAmount: Number(row.order_amount),
      discountAmount: Number(row.discount_amount),
      status: row.status as ReservationState,
      requestId: String(row.request_id),
      requestFingerprint: (row.request_fingerprint as string | null) ?? null,
      expiresAt: at(row.expires_at) as Date,
      endedAt: at(row.ended_at),
      endReason: (row.end_reason as string | null) ?? null,
      refundedAt: at(row.refunded_at),
      createdAt: at(row.created_at) as Date,
      updatedAt: at(row.updated_at) as Date,
    },
    // raw: the timestamps are the row's own, not values for Sequelize to manage.
    { isNewRecord: false, raw: true },
  );
}

interface ReservedUnderRow {
  request_id: string;
  coupon_id: string;
  order_id: string;
  order_amount: string;
  request_fingerprint: string | null;
}

/** The keys asked about in one turn of the event loop, looked up together on uq_reservations_request. */
const readReservedUnder = batchedQuery<string, ReservedUnderRow>(
  'SELECT request_id, coupon_id, order_id, order_amount, request_fingerprint FROM reservations WHERE request_id = ANY($1)',
  (requestIds) => requestIds,
  (requestId) => requestId,
  (row) => row.request_id,
);

/**
 * What the reservation a request id (a user's Idempotency-Key) made was asked with, or null when the
 * key reserved nothing: how the web tells a replay from another body once Redis forgot the key (I8).
 */
export async function reservedUnder(db: Sequelize, requestId: string): Promise<ReserveRequestFacts | null> {
  const row = await readReservedUnder(db, requestId);
  if (!row) return null;
  return { couponId: row.coupon_id, orderId: row.order_id, orderAmount: Number(row.order_amount), fingerprint: row.request_fingerprint };
}
