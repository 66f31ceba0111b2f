// The coupons table: the Sequelize model, its queries and the API view of a coupon.
import { randomUUID } from 'node:crypto';
import {
  DataTypes,
  Model,
  Op,
  UniqueConstraintError,
  DatabaseError,
  type CreationOptional,
  type InferAttributes,
  type InferCreationAttributes,
  type Sequelize,
  type WhereOptions,
} from 'sequelize';
import type { CouponView } from '../queues/jobs';
import { afterCursor, newestFirst, pageOf, type Cursor } from './cursor';

export type CouponStatus = 'ISSUED' | 'RESERVED' | 'USED' | 'EXPIRED';
export type CouponApiStatus = CouponView['status'];

export class Coupon extends Model<InferAttributes<Coupon>, InferCreationAttributes<Coupon>> {
  declare id: string;
  declare policyId: string;
  declare userId: string;
  declare status: CreationOptional<CouponStatus>;
  declare slot: number | null;
  declare requestId: string;
  declare issuedAt: Date;
  declare expiresAt: Date;
  declare reservedAt: CreationOptional<Date | null>;
  declare usedAt: CreationOptional<Date | null>;
  declare orderId: CreationOptional<string | null>;
  declare reservationId: CreationOptional<string | null>;
  declare createdAt: CreationOptional<Date>;
  declare updatedAt: CreationOptional<Date>;
}

export function initCouponModel(db: Sequelize): void {
  Coupon.init(
    {
      id: { type: DataTypes.TEXT, primaryKey: true },
      policyId: { type: DataTypes.TEXT, allowNull: false, field: 'policy_id' },
      userId: { type: DataTypes.TEXT, allowNull: false, field: 'user_id' },
      status: { type: DataTypes.TEXT, allowNull: false, defaultValue: 'ISSUED' },
      slot: { type: DataTypes.INTEGER, allowNull: true },
      requestId: { type: DataTypes.TEXT, allowNull: false, field: 'request_id' },
      issuedAt: { type: DataTypes.DATE, allowNull: false, field: 'issued_at' },
      expiresAt: { type: DataTypes.DATE, allowNull: false, field: 'expires_at' },
      reservedAt: { type: DataTypes.DATE, allowNull: true, field: 'reserved_at' },
      usedAt: { type: DataTypes.DATE, allowNull: true, field: 'used_at' },
      orderId: { type: DataTypes.TEXT, allowNull: true, field: 'order_id' },
      reservationId: { type: DataTypes.TEXT, allowNull: true, field: 'reservation_id' },
      createdAt: { type: DataTypes.DATE, field: 'created_at' },
      updatedAt: { type: DataTypes.DATE, field: 'updated_at' },
    },
    { sequelize: db, tableName: 'coupons', underscored: true, timestamps: true },
  );
}

/** ISSUED reads as AVAILABLE until it expires, and as EXPIRED after, even before the sweeper marks it. */
export function apiStatus(c: Pick<Coupon, 'status' | 'expiresAt'>, now: Date): CouponApiStatus {
  if (c.status === 'ISSUED') return c.expiresAt > now ? 'AVAILABLE' : 'EXPIRED';
  return c.status;
}

export function couponView(c: Coupon, now = new Date()): CouponView {
  return {
    id: c.id,
    policyId: c.policyId,
    userId: c.userId,
    status: apiStatus(c, now),
    issuedAt: c.issuedAt.toISOString(),
    expiresAt: c.expiresAt.toISOString(),
    ...(c.reservedAt && { reservedAt: c.reservedAt.toISOString() }),
    ...(c.usedAt && { usedAt: c.usedAt.toISOString() }),
    ...(c.orderId && { orderId: c.orderId }),
    ...(c.reservationId && { reservationId: c.reservationId }),
  };
}

export type InsertOutcome =
  | { kind: 'inserted'; coupon: Coupon }
  | { kind: 'duplicate-request'; coupon: Coupon }
  | { kind: 'user-limit' }
  | { kind: 'policy-inactive' }
  | { kind: 'slot-taken' };

const constraintOf = (error: unknown): string | undefined => {
  if (error instanceof UniqueConstraintError) {
    return (error.parent as { constraint?: string } | undefined)?.constraint;
  }
  if (error instanceof DatabaseError) return (error.parent as { constraint?: string }).constraint;
  return undefined;
};

/**
 * Writes the coupon of one admitted issue request. The database decides the edge cases:
 * a request already written (a retried job) returns its coupon, and the slot and per-user
 * guards refuse what Redis should never have admitted.
 */
export async function insertIssuedCoupon(input: {
  policyId: string;
  userId: string;
  slot: number | null;
  requestId: string;
  issuedAt: Date;
  expiresAt: Date;
}): Promise<InsertOutcome> {
  try {
    const coupon = await Coupon.create({ id: randomUUID(), ...input });
    return { kind: 'inserted', coupon };
  } catch (error) {
    const constraint = constraintOf(error);
    if (constraint === undefined) throw error;
    // A retried request whose first attempt committed before its worker died: its row trips the
    // per-user or slot guard before the request_id one, so look for it first.
    const existing = await Coupon.findOne({ where: { requestId: input.requestId } });
    if (existing) return { kind: 'duplicate-request', coupon: existing };
    if (constraint === 'ck_coupons_per_user_limit') return { kind: 'user-limit' };
    if (constraint === 'ck_coupons_policy_active') return { kind: 'policy-inactive' };
    if (constraint === 'uq_coupons_policy_slot' || constraint === 'ck_coupons_slot_within_quantity') {
      return { kind: 'slot-taken' };
    }
    throw error;
  }
}

export async function findCouponByRequest(requestId: string): Promise<Coupon | null> {
  return Coupon.findOne({ where: { requestId } });
}

const STATUS_FILTERS: Record<CouponApiStatus, (now: Date) => WhereOptions> = {
  AVAILABLE: (now) => ({ status: 'ISSUED', expiresAt: { [Op.gt]: now } }),
  RESERVED: () => ({ status: 'RESERVED' }),
  USED: () => ({ status: 'USED' }),
  EXPIRED: (now) => ({ [Op.or]: [{ status: 'EXPIRED' }, { status: 'ISSUED', expiresAt: { [Op.lte]: now } }] }),
};

/** A user's coupons, newest first, keyset-paged on (issued_at, id). */
export async function listUserCoupons(opts: {
  userId: string;
  status?: CouponApiStatus;
  limit: number;
  cursor?: Cursor;
  now?: Date;
}): Promise<{ data: CouponView[]; nextCursor: string | null }> {
  const now = opts.now ?? new Date();
  const clauses: WhereOptions[] = [{ userId: opts.userId }];
  if (opts.status) clauses.push(STATUS_FILTERS[opts.status](now));
  if (opts.cursor) clauses.push(afterCursor('issuedAt', opts.cursor));
  const rows = await Coupon.findAll({ where: { [Op.and]: clauses }, order: newestFirst('issuedAt'), limit: opts.limit + 1 });
  const { page, nextCursor } = pageOf(rows, opts.limit, (c) => c.issuedAt);
  return { data: page.map((c) => couponView(c, now)), nextCursor };
}
