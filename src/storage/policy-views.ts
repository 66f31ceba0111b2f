// What each audience reads of a policy (I12). A shopper gets the terms of the offer; the shared
// code, the trigger event, the refund rule and the counters are the admin's. Every answer is parsed
// through its audience's schema, which drops any key the schema does not name: a field added to the
// model later reaches nobody until a schema names it. The same schemas make the OpenAPI document.
import { z } from 'zod';
import type { CouponPolicy, PolicyCounts } from './policy';
import { DISCOUNT_TYPES, ISSUE_METHODS, POLICY_STATUSES } from '../domain/policy-rules';

/** A policy as a user (a shopper) reads it. */
export const policyUserViewSchema = z.object({
  id: z.string(),
  name: z.string(),
  description: z.string().optional(),
  discount: z.object({
    type: z.enum(DISCOUNT_TYPES),
    value: z.number().int(),
    maxDiscountAmount: z.number().int().optional(),
    minOrderAmount: z.number().int().optional(),
  }),
  issueMethod: z.enum(ISSUE_METHODS),
  totalQuantity: z.number().int().nullable(),
  perUserLimit: z.number().int(),
  issueWindow: z.object({ startsAt: z.string(), endsAt: z.string().optional() }),
  validity: z.object({ until: z.string().optional(), days: z.number().int().optional() }),
  status: z.enum(POLICY_STATUSES),
  soldOut: z.boolean().describe('Every unit of a limited policy is issued (false for an unlimited one); raising the quantity clears it'),
  createdAt: z.string(),
});
export type PolicyUserView = z.infer<typeof policyUserViewSchema>;

/** A policy as an admin reads it: the user's view and what only an admin may read. */
export const policyAdminViewSchema = policyUserViewSchema.extend({
  code: z.string().optional().describe("A CODE policy's shared code"),
  triggerEvent: z.string().optional().describe("An EVENT policy's user event type"),
  restoreOnRefund: z.boolean(),
  issuedCount: z.number().int().describe('Coupons issued (kept by the writes, exact at commit)'),
  usedCount: z.number().int().describe('Coupons USED now (a refund that restores a coupon takes it back)'),
  updatedAt: z.string(),
});
export type PolicyAdminView = z.infer<typeof policyAdminViewSchema>;

/** The admin-only keys of a policy view: what an admin reads and a user never does. */
export const ADMIN_ONLY_POLICY_FIELDS = Object.keys(policyAdminViewSchema.shape).filter((k) => !(k in policyUserViewSchema.shape));

export type Audience = 'admin' | 'user';

/** Everything the model knows of a policy, before an audience's schema picks its part. */
function fullView(p: CouponPolicy, counts: PolicyCounts): Record<string, unknown> {
  return {
    id: p.id,
    name: p.name,
    ...(p.description !== null && { description: p.description }),
    discount: {
      type: p.discountType,
      value: p.discountValue,
      ...(p.maxDiscountAmount !== null && { maxDiscountAmount: p.maxDiscountAmount }),
      ...(p.minOrderAmount !== null && { minOrderAmount: p.minOrderAmount }),
    },
    issueMethod: p.issueMethod,
    totalQuantity: p.totalQuantity,
    perUserLimit: p.perUserLimit,
    issueWindow: { startsAt: p.issueStartsAt.toISOString(), ...(p.issueEndsAt && { endsAt: p.issueEndsAt.toISOString() }) },
    validity: {
      ...(p.validUntil && { until: p.validUntil.toISOString() }),
      ...(p.validDays !== null && { days: p.validDays }),
    },
    ...(p.code !== null && { code: p.code }),
    ...(p.triggerEvent !== null && { triggerEvent: p.triggerEvent }),
    status: p.status,
    soldOut: p.totalQuantity !== null && counts.issuedCount >= p.totalQuantity,
    restoreOnRefund: p.restoreOnRefund,
    issuedCount: counts.issuedCount,
    usedCount: counts.usedCount,
    version: p.version,
    createdAt: p.createdAt.toISOString(),
    updatedAt: p.updatedAt.toISOString(),
  };
}

const NO_COUNTS: PolicyCounts = { issuedCount: 0, usedCount: 0 };

/** A policy as an admin reads it (unknown keys dropped by the schema). */
export function adminPolicyView(p: CouponPolicy, counts: PolicyCounts = NO_COUNTS): PolicyAdminView {
  return policyAdminViewSchema.parse(fullView(p, counts));
}

/** A policy as a user reads it: no shared code, trigger, refund rule or counters. */
export function userPolicyView(p: CouponPolicy, counts: PolicyCounts = NO_COUNTS): PolicyUserView {
  return policyUserViewSchema.parse(fullView(p, counts));
}

/** The view of `audience`. */
export function policyViewFor(audience: Audience, p: CouponPolicy, counts?: PolicyCounts): PolicyAdminView | PolicyUserView {
  return audience === 'admin' ? adminPolicyView(p, counts) : userPolicyView(p, counts);
}
