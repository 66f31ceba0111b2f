// Coupon policy rules as pure functions over plain data: the shapes a policy may take, how it may change,
// whether it issues at a given instant and when its coupons expire. No I/O here.
import { z } from 'zod';
import { boundedDateTime, MAX_MONEY } from '../core/bounds';
import { AppError, type Reason, reason } from '../core/errors';

export const DISCOUNT_TYPES = ['FIXED', 'PERCENTAGE'] as const;
export const ISSUE_METHODS = ['FIRST_COME', 'DOWNLOAD', 'CODE', 'EVENT', 'DIRECT'] as const;
export const POLICY_STATUSES = ['ACTIVE', 'PAUSED', 'ENDED'] as const;

export type IssueMethod = (typeof ISSUE_METHODS)[number];
export type PolicyStatus = (typeof POLICY_STATUSES)[number];

// Dates within the years 2000..2099 and money up to a trillion in the smallest unit (src/core/bounds.ts).
const isoDateTime = boundedDateTime();
const money = z.number().int().min(0).max(MAX_MONEY);

export const discountSchema = z
  .object({
    type: z.enum(DISCOUNT_TYPES),
    value: money.min(1),
    maxDiscountAmount: money.min(1).optional(),
    minOrderAmount: money.optional(),
  })
  .strict()
  .refine((d) => d.type !== 'PERCENTAGE' || d.value <= 100, {
    message: 'a PERCENTAGE discount is 1..100',
    path: ['value'],
  });

export const policyCreateSchema = z
  .object({
    name: z.string().trim().min(1).max(200),
    description: z.string().max(2000).optional(),
    discount: discountSchema,
    issueMethod: z.enum(ISSUE_METHODS),
    totalQuantity: z.number().int().min(1).max(100_000_000).nullable().optional(),
    perUserLimit: z.number().int().min(1).max(1000).default(1),
    issueWindow: z
      .object({ startsAt: isoDateTime, endsAt: isoDateTime.optional() })
      .strict()
      .refine((w) => !w.endsAt || Date.parse(w.endsAt) > Date.parse(w.startsAt), {
        message: 'endsAt must be after startsAt',
        path: ['endsAt'],
      }),
    validity: z
      .object({ until: isoDateTime.optional(), days: z.number().int().min(1).max(3650).optional() })
      .strict()
      .refine((v) => v.until !== undefined || v.days !== undefined, { message: 'give until, days or both' }),
    code: z
      .string()
      .regex(/^[A-Za-z0-9_-]{4,32}$/, '4-32 letters, digits, _ or -')
      .optional(),
    triggerEvent: z
      .string()
      .regex(/^[A-Z][A-Z0-9_]{1,63}$/, 'an event type such as USER_SIGNED_UP')
      .optional(),
    status: z.enum(['ACTIVE', 'PAUSED']).default('ACTIVE'),
    // A refunded order gives its coupon back while the coupon is still valid.
    restoreOnRefund: z.boolean().default(true),
  })
  .strict()
  .superRefine((p, ctx) => {
    if (p.issueMethod === 'FIRST_COME' && (p.totalQuantity === undefined || p.totalQuantity === null)) {
      ctx.addIssue({ code: 'custom', path: ['totalQuantity'], message: 'FIRST_COME needs a totalQuantity' });
    }
    if (p.code !== undefined && p.issueMethod !== 'CODE') {
      ctx.addIssue({ code: 'custom', path: ['code'], message: 'only a CODE policy has a shared code' });
    }
    if ((p.issueMethod === 'EVENT') !== (p.triggerEvent !== undefined)) {
      ctx.addIssue({ code: 'custom', path: ['triggerEvent'], message: 'an EVENT policy, and only it, has a triggerEvent' });
    }
    if (p.validity.until !== undefined && Date.parse(p.validity.until) <= Date.parse(p.issueWindow.startsAt)) {
      ctx.addIssue({ code: 'custom', path: ['validity', 'until'], message: 'until must be after issueWindow.startsAt' });
    }
  });

export type PolicyCreate = z.infer<typeof policyCreateSchema>;

export const policyPatchSchema = z
  .object({
    name: z.string().trim().min(1).max(200).optional(),
    description: z.string().max(2000).nullable().optional(),
    status: z.enum(POLICY_STATUSES).optional(),
    issueWindow: z.object({ endsAt: isoDateTime.nullable() }).strict().optional(),
    totalQuantity: z.number().int().min(1).max(100_000_000).optional(),
  })
  .strict()
  .refine((p) => Object.keys(p).length > 0, { message: 'nothing to change' });

export type PolicyPatch = z.infer<typeof policyPatchSchema>;

/** The fields of a stored policy the rules need. Dates are Date objects. */
export interface PolicyRules {
  issueMethod: IssueMethod;
  status: PolicyStatus;
  totalQuantity: number | null;
  perUserLimit: number;
  issueStartsAt: Date;
  issueEndsAt: Date | null;
  validUntil: Date | null;
  validDays: number | null;
}

export interface PolicyChanges {
  name?: string;
  description?: string | null;
  status?: PolicyStatus;
  issueEndsAt?: Date | null;
  totalQuantity?: number;
}

const invalid = (path: string, message: string) => new AppError('VALIDATION_FAILED', message, [{ path, message }]);

/** Checks a patch against the stored policy: pause/resume/end, extend the window, raise the quantity. */
export function planPolicyChange(current: PolicyRules, patch: PolicyPatch): PolicyChanges {
  const changes: PolicyChanges = {};
  if (patch.name !== undefined) changes.name = patch.name;
  if (patch.description !== undefined) changes.description = patch.description;
  if (patch.status !== undefined && patch.status !== current.status) {
    if (current.status === 'ENDED') throw new AppError('CONFLICT', 'an ENDED policy cannot be reopened');
    changes.status = patch.status;
  }
  if (patch.issueWindow !== undefined) {
    const next = patch.issueWindow.endsAt === null ? null : new Date(patch.issueWindow.endsAt);
    if (next !== null && next <= current.issueStartsAt) {
      throw invalid('issueWindow.endsAt', 'endsAt must be after the window start');
    }
    if (current.issueEndsAt !== null && next !== null && next < current.issueEndsAt) {
      throw invalid('issueWindow.endsAt', 'the window can only be extended; end the policy to stop it early');
    }
    changes.issueEndsAt = next;
  }
  if (patch.totalQuantity !== undefined) {
    if (current.totalQuantity === null) {
      throw invalid('totalQuantity', 'an unlimited policy cannot be given a quantity');
    }
    if (patch.totalQuantity < current.totalQuantity) {
      throw invalid('totalQuantity', `the quantity can only be raised (now ${current.totalQuantity})`);
    }
    changes.totalQuantity = patch.totalQuantity;
  }
  return changes;
}

/** Why a policy does not issue at `now`, or null when it does. */
export function issueRefusal(policy: Pick<PolicyRules, 'status' | 'issueStartsAt' | 'issueEndsAt'>, now: Date): Reason | null {
  if (policy.status !== 'ACTIVE') return reason('POLICY_NOT_ACTIVE');
  if (now < policy.issueStartsAt || (policy.issueEndsAt !== null && now >= policy.issueEndsAt)) {
    return reason('OUTSIDE_ISSUE_WINDOW');
  }
  return null;
}

const DAY_MS = 86_400_000;

/** A coupon expires at the earlier of issuedAt + validDays and validUntil. */
export function couponExpiry(policy: Pick<PolicyRules, 'validUntil' | 'validDays'>, issuedAt: Date): Date {
  const candidates: number[] = [];
  if (policy.validDays !== null) candidates.push(issuedAt.getTime() + policy.validDays * DAY_MS);
  if (policy.validUntil !== null) candidates.push(policy.validUntil.getTime());
  if (candidates.length === 0) throw new Error('a policy without validity cannot issue');
  return new Date(Math.min(...candidates));
}
