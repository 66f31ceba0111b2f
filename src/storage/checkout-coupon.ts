// A coupon as checkout decides on it: its holder, state and reservation, with the discount rule of
// its policy. Read by a reserve (src/usecases/reserve.ts) and by POST /coupons/validate, in batches.
import type { Sequelize } from 'sequelize';
import { batchedQuery } from './batched-query';
import type { CouponState, DiscountRule } from '../domain/checkout-rules';

/** A coupon as a checkout decision needs it, with the rules of its policy. */
export interface CouponRow {
  id: string;
  user_id: string;
  status: CouponState;
  expires_at: Date;
  reservation_id: string | null;
  order_id: string | null;
  discount_type: DiscountRule['type'];
  discount_value: string;
  max_discount_amount: string | null;
  min_order_amount: string | null;
  restore_on_refund: boolean;
}

const COUPON_COLUMNS = `c.id, c.user_id, c.status, c.expires_at, c.reservation_id, c.order_id,
  p.discount_type, p.discount_value, p.max_discount_amount, p.min_order_amount, p.restore_on_refund`;

export function ruleOf(c: CouponRow): DiscountRule {
  const num = (v: string | null) => (v === null ? null : Number(v));
  return {
    type: c.discount_type,
    value: Number(c.discount_value),
    maxDiscountAmount: num(c.max_discount_amount),
    minOrderAmount: num(c.min_order_amount),
  };
}

/** The coupons asked for in one turn of the event loop, read together. */
export const readCoupon = batchedQuery<string, CouponRow>(
  `SELECT ${COUPON_COLUMNS} FROM coupons c JOIN coupon_policies p ON p.id = c.policy_id WHERE c.id = ANY($1)`,
  (ids) => ids,
  (id) => id,
  (row) => row.id,
);

/** A coupon as POST /coupons/validate needs it: its holder, state and discount rule. A plain read. */
export async function readCouponForCheckout(
  db: Sequelize,
  couponId: string,
): Promise<{ userId: string; status: CouponState; expiresAt: Date; rule: DiscountRule } | null> {
  const c = await readCoupon(db, couponId);
  return c ? { userId: c.user_id, status: c.status, expiresAt: new Date(c.expires_at), rule: ruleOf(c) } : null;
}
