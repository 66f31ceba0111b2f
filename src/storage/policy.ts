// The coupon_policies table: the Sequelize model and its queries (the API views are in policy-views.ts).
import {
  DataTypes,
  Model,
  Op,
  QueryTypes,
  type CreationAttributes,
  type CreationOptional,
  type InferAttributes,
  type InferCreationAttributes,
  type Sequelize,
  type Transaction,
  type WhereOptions,
} from 'sequelize';
import { afterCursor, newestFirst, pageOf, type Cursor } from './cursor';
import type { IssueMethod, PolicyCreate, PolicyRules, PolicyStatus } from '../domain/policy-rules';

export class CouponPolicy extends Model<InferAttributes<CouponPolicy>, InferCreationAttributes<CouponPolicy>> {
  declare id: string;
  declare name: string;
  declare description: string | null;
  declare discountType: 'FIXED' | 'PERCENTAGE';
  declare discountValue: number;
  declare maxDiscountAmount: number | null;
  declare minOrderAmount: number | null;
  declare issueMethod: IssueMethod;
  declare totalQuantity: number | null;
  declare perUserLimit: number;
  declare issueStartsAt: Date;
  declare issueEndsAt: Date | null;
  declare validUntil: Date | null;
  declare validDays: number | null;
  declare code: string | null;
  declare triggerEvent: string | null;
  declare status: PolicyStatus;
  declare restoreOnRefund: CreationOptional<boolean>;
  declare version: CreationOptional<number>;
  declare createdAt: CreationOptional<Date>;
  declare updatedAt: CreationOptional<Date>;
}

// bigint columns arrive from pg as strings; money is well inside Number's exact range.
const money = (attribute: string, field: string, allowNull: boolean) => ({
  type: DataTypes.BIGINT,
  allowNull,
  field,
  get(this: Model) {
    const raw = this.getDataValue(attribute as never) as string | number | null;
    return raw === null || raw === undefined ? raw : Number(raw);
  },
});

export function initPolicyModel(db: Sequelize): void {
  CouponPolicy.init(
    {
      id: { type: DataTypes.TEXT, primaryKey: true },
      name: { type: DataTypes.TEXT, allowNull: false },
      description: { type: DataTypes.TEXT, allowNull: true },
      discountType: { type: DataTypes.TEXT, allowNull: false, field: 'discount_type' },
      discountValue: money('discountValue', 'discount_value', false),
      maxDiscountAmount: money('maxDiscountAmount', 'max_discount_amount', true),
      minOrderAmount: money('minOrderAmount', 'min_order_amount', true),
      issueMethod: { type: DataTypes.TEXT, allowNull: false, field: 'issue_method' },
      totalQuantity: { type: DataTypes.INTEGER, allowNull: true, field: 'total_quantity' },
      perUserLimit: { type: DataTypes.INTEGER, allowNull: false, field: 'per_user_limit' },
      issueStartsAt: { type: DataTypes.DATE, allowNull: false, field: 'issue_starts_at' },
      issueEndsAt: { type: DataTypes.DATE, allowNull: true, field: 'issue_ends_at' },
      validUntil: { type: DataTypes.DATE, allowNull: true, field: 'valid_until' },
      validDays: { type: DataTypes.INTEGER, allowNull: true, field: 'valid_days' },
      code: { type: DataTypes.TEXT, allowNull: true },
      triggerEvent: { type: DataTypes.TEXT, allowNull: true, field: 'trigger_event' },
      status: { type: DataTypes.TEXT, allowNull: false },
      restoreOnRefund: { type: DataTypes.BOOLEAN, allowNull: false, defaultValue: true, field: 'restore_on_refund' },
      version: { type: DataTypes.INTEGER, allowNull: false, defaultValue: 1 },
      createdAt: { type: DataTypes.DATE, field: 'created_at' },
      updatedAt: { type: DataTypes.DATE, field: 'updated_at' },
    },
    { sequelize: db, tableName: 'coupon_policies', underscored: true, timestamps: true },
  );
}

export function policyRowFromCreate(id: string, input: PolicyCreate): CreationAttributes<CouponPolicy> {
  return {
    id,
    name: input.name,
    description: input.description ?? null,
    discountType: input.discount.type,
    discountValue: input.discount.value,
    maxDiscountAmount: input.discount.maxDiscountAmount ?? null,
    minOrderAmount: input.discount.minOrderAmount ?? null,
    issueMethod: input.issueMethod,
    totalQuantity: input.totalQuantity ?? null,
    perUserLimit: input.perUserLimit,
    issueStartsAt: new Date(input.issueWindow.startsAt),
    issueEndsAt: input.issueWindow.endsAt ? new Date(input.issueWindow.endsAt) : null,
    validUntil: input.validity.until ? new Date(input.validity.until) : null,
    validDays: input.validity.days ?? null,
    code: input.code ?? null,
    triggerEvent: input.triggerEvent ?? null,
    status: input.status,
    restoreOnRefund: input.restoreOnRefund,
  };
}

export function policyRules(p: CouponPolicy): PolicyRules {
  return {
    issueMethod: p.issueMethod,
    status: p.status,
    totalQuantity: p.totalQuantity,
    perUserLimit: p.perUserLimit,
    issueStartsAt: p.issueStartsAt,
    issueEndsAt: p.issueEndsAt,
    validUntil: p.validUntil,
    validDays: p.validDays,
  };
}

/** The counts of the policies $1 (a text[]): sums of their counter shards. */
export const POLICY_COUNTS_SQL = `SELECT policy_id, sum(issued) AS issued, sum(used) AS used
  FROM policy_counters WHERE policy_id = ANY($1) GROUP BY policy_id`;

/** A policy's coupons issued and used, as the counters kept by the writes give them. */
export interface PolicyCounts {
  issuedCount: number;
  usedCount: number;
}

/**
 * Each policy's issuedCount and usedCount from policy_counters: one index scan of at most 8 shard
 * rows a policy, kept by the writes to coupons (src/storage/sql/policy_counters_add.sql). No coupon is
 * read, so a policy of a million coupons costs what an empty one does.
 */
export async function countCoupons(db: Sequelize, policyIds: string[]): Promise<Map<string, PolicyCounts>> {
  const counts = new Map<string, PolicyCounts>(policyIds.map((id) => [id, { issuedCount: 0, usedCount: 0 }]));
  if (policyIds.length === 0) return counts;
  const rows = await db.query<{ policy_id: string; issued: string; used: string }>(POLICY_COUNTS_SQL, {
    bind: [policyIds],
    type: QueryTypes.SELECT,
  });
  for (const r of rows) counts.set(r.policy_id, { issuedCount: Number(r.issued), usedCount: Number(r.used) });
  return counts;
}

export interface PolicyPage {
  rows: CouponPolicy[];
  nextCursor: string | null;
}

/** Newest first, keyset-paged on (created_at, id). */
export async function listPolicies(opts: { status?: PolicyStatus; limit: number; cursor?: Cursor }): Promise<PolicyPage> {
  const clauses: WhereOptions[] = [];
  if (opts.status) clauses.push({ status: opts.status });
  if (opts.cursor) clauses.push(afterCursor('createdAt', opts.cursor));
  const rows = await CouponPolicy.findAll({ where: { [Op.and]: clauses }, order: newestFirst('createdAt'), limit: opts.limit + 1 });
  const { page, nextCursor } = pageOf(rows, opts.limit, (p) => p.createdAt);
  return { rows: page, nextCursor };
}

/** Reads a policy and locks its row until the transaction ends, so concurrent admin changes queue up. */
export async function findPolicyForUpdate(id: string, tx: Transaction): Promise<CouponPolicy | null> {
  return CouponPolicy.findByPk(id, { transaction: tx, lock: tx.LOCK.UPDATE });
}
