// The coupons table: the Sequelize model, its queries and the API view of a coupon.
import { randomUUID } from 'node:crypto';
import {
  DataTypes,
  Model,
  Op,
  QueryTypes,
  type CreationOptional,
  type InferAttributes,
  type InferCreationAttributes,
  type Sequelize,
  type WhereOptions,
} from 'sequelize';
import { coalescePerDatabase } from './batched-query';
import type { CouponView } from '../domain/coupon-view';
import { afterCursor, newestFirst, pageOf, type Cursor } from './cursor';
import { invalidateUserCoupons, readThroughUserCoupons } from './cache/user-coupon-cache';

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
  | { kind: 'slot-taken' }
  | { kind: 'code-used' }
  | { kind: 'code-unknown' };

export interface IssuedCouponInput {
  policyId: string;
  userId: string;
  slot: number | null;
  requestId: string;
  issuedAt: Date;
  expiresAt: Date;
  /** The hash of the single-use code this coupon is redeemed with (src/storage/codes.ts). */
  codeHash?: string;
}

const OUTCOME_BY_CONSTRAINT: Record<string, InsertOutcome['kind']> = {
  ck_coupons_per_user_limit: 'user-limit',
  ck_coupons_policy_active: 'policy-inactive',
  uq_coupons_policy_slot: 'slot-taken',
  ck_coupons_slot_within_quantity: 'slot-taken',
  uq_coupons_code_hash: 'code-used',
  fk_coupons_code: 'code-unknown',
};

/** A coupon row as to_jsonb gives it (snake_case, ISO times), made into a model instance. */
function couponFromJson(row: Record<string, unknown>): Coupon {
  const at = (v: unknown) => (v === null || v === undefined ? null : new Date(String(v)));
  return Coupon.build(
    {
      id: String(row.id),
      policyId: String(row.policy_id),
      userId: String(row.user_id),
      status: row.status as CouponStatus,
      slot: row.slot === null ? null : Number(row.slot),
      requestId: String(row.request_id),
      issuedAt: at(row.issued_at) as Date,
      expiresAt: at(row.expires_at) as Date,
      reservedAt: at(row.reserved_at),
      usedAt: at(row.used_at),
      orderId: (row.order_id as string | null) ?? null,
      reservationId: (row.reservation_id as string | null) ?? null,
      createdAt: at(row.created_at) as Date,
      updatedAt: at(row.updated_at) as Date,
    },
    { isNewRecord: false },
  );
}

type RowResult = { req: string; outcome: string; coupon: Record<string, unknown> | null };

function outcomeOf(row: IssuedCouponInput, result: RowResult | undefined): InsertOutcome | Error {
  if (result?.outcome === 'inserted' || result?.outcome === 'duplicate-request') {
    return { kind: result.outcome, coupon: couponFromJson(result.coupon ?? {}) };
  }
  const kind = OUTCOME_BY_CONSTRAINT[result?.outcome ?? ''];
  return kind ? ({ kind } as InsertOutcome) : new Error(`coupon insert for ${row.requestId} answered ${result?.outcome ?? 'nothing'}`);
}

/**
 * Writes the coupon of one admitted issue request. The inserts asked for in the same turn of the
 * event loop on one database travel together in one statement (insert_issued_coupons), one outcome
 * per row. The database decides the edge cases: a request already written (a rerun) returns its
 * coupon, and the slot, per-user and policy-status guards refuse what Redis should never have admitted.
 */
export const insertIssuedCoupon = coalescePerDatabase((db) => async (rows: IssuedCouponInput[]) => {
  const results = await db.query<RowResult>('SELECT req, outcome, coupon FROM insert_issued_coupons($1::jsonb)', {
    bind: [JSON.stringify(rows.map((row) => ({ id: randomUUID(), ...row })))],
    type: QueryTypes.SELECT,
  });
  // Committed: drop the lists of the users whose coupon was written (or found, by a rerun).
  await invalidateUserCoupons(results.flatMap((r) => (r.coupon ? [String(r.coupon.user_id)] : [])));
  const byRequest = new Map(results.map((r) => [r.req, r]));
  return rows.map((row) => outcomeOf(row, byRequest.get(row.requestId)));
});

export async function findCouponByRequest(requestId: string): Promise<Coupon | null> {
  return Coupon.findOne({ where: { requestId } });
}

/** Whether some coupon carries this single-use code's hash (at most one can: uq_coupons_code_hash). */
export async function codeIsUsed(db: Sequelize, codeHash: string): Promise<boolean> {
  const rows = await db.query('SELECT 1 FROM coupons WHERE code_hash = $1 LIMIT 1', {
    bind: [codeHash],
    type: QueryTypes.SELECT,
  });
  return rows.length > 0;
}

const STATUS_FILTERS: Record<CouponApiStatus, (now: Date) => WhereOptions> = {
  AVAILABLE: (now) => ({ status: 'ISSUED', expiresAt: { [Op.gt]: now } }),
  RESERVED: () => ({ status: 'RESERVED' }),
  USED: () => ({ status: 'USED' }),
  EXPIRED: (now) => ({ [Op.or]: [{ status: 'EXPIRED' }, { status: 'ISSUED', expiresAt: { [Op.lte]: now } }] }),
};

/** A page as the user coupon cache keeps it: stored statuses, turned into the API's when read. */
interface StoredPage {
  rows: (Omit<CouponView, 'status'> & { status: CouponStatus })[];
  nextCursor: string | null;
  /** An AVAILABLE page is right until the first of its rows (limit + 1 fetched) expires. */
  validUntil: number | null;
}

/**
 * A user's coupons, newest first, keyset-paged on (issued_at, id), through the user's list cache
 * (src/storage/cache/user-coupon-cache.ts). The API status is computed when read, so a cached ISSUED coupon
 * turns EXPIRED on time. An EXPIRED page grows as coupons expire, so it is never cached.
 */
export async function listUserCoupons(opts: {
  userId: string;
  status?: CouponApiStatus;
  limit: number;
  cursor?: Cursor;
  now?: Date;
}): Promise<{ data: CouponView[]; nextCursor: string | null }> {
  const now = opts.now ?? new Date();
  const load = async (): Promise<StoredPage> => {
    const clauses: WhereOptions[] = [{ userId: opts.userId }];
    if (opts.status) clauses.push(STATUS_FILTERS[opts.status](now));
    if (opts.cursor) clauses.push(afterCursor('issuedAt', opts.cursor));
    const rows = await Coupon.findAll({ where: { [Op.and]: clauses }, order: newestFirst('issuedAt'), limit: opts.limit + 1 });
    const { page, nextCursor } = pageOf(rows, opts.limit, (c) => c.issuedAt);
    return {
      rows: page.map((c) => ({ ...couponView(c, now), status: c.status })),
      nextCursor,
      validUntil: opts.status === 'AVAILABLE' && rows.length > 0 ? Math.min(...rows.map((c) => c.expiresAt.getTime())) : null,
    };
  };
  const field = `q:${opts.status ?? '*'}:${opts.limit}:${opts.cursor ? `${opts.cursor.at.toISOString()}/${opts.cursor.id}` : ''}`;
  // Only first pages are cached: a client picks cursors freely, and each would be an entry.
  const stored =
    opts.status === 'EXPIRED' || opts.cursor
      ? await load()
      : await readThroughUserCoupons(opts.userId, field, load, (p) => p.validUntil === null || now.getTime() < p.validUntil);
  return {
    data: stored.rows.map((r) => ({ ...r, status: apiStatus({ status: r.status, expiresAt: new Date(r.expiresAt) }, now) })),
    nextCursor: stored.nextCursor,
  };
}
