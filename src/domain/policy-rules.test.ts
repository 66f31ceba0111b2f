import { AppError } from '../core/errors';
import { couponExpiry, issueRefusal, planPolicyChange, policyCreateSchema, type PolicyRules } from './policy-rules';

const base: PolicyRules = {
  issueMethod: 'FIRST_COME',
  status: 'ACTIVE',
  totalQuantity: 100,
  perUserLimit: 1,
  issueStartsAt: new Date('2026-01-01T00:00:00Z'),
  issueEndsAt: new Date('2026-02-01T00:00:00Z'),
  validUntil: null,
  validDays: 7,
};

const validInput = {
  name: 'Black Friday',
  discount: { type: 'PERCENTAGE', value: 10, maxDiscountAmount: 5000 },
  issueMethod: 'FIRST_COME',
  totalQuantity: 100,
  issueWindow: { startsAt: '2026-01-01T00:00:00Z', endsAt: '2026-01-02T00:00:00Z' },
  validity: { days: 7 },
};

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    return error instanceof AppError ? error.code : 'not-an-AppError';
  }
  return undefined;
}

describe('policy input', () => {
  it('accepts a complete FIRST_COME policy and defaults perUserLimit to 1 and status to ACTIVE', () => {
    const parsed = policyCreateSchema.parse(validInput);
    expect(parsed.perUserLimit).toBe(1);
    expect(parsed.status).toBe('ACTIVE');
  });

  it.each([
    ['a FIRST_COME policy without quantity', { totalQuantity: undefined }, 'totalQuantity'],
    ['a percentage above 100', { discount: { type: 'PERCENTAGE', value: 101 } }, 'discount.value'],
    ['a zero discount', { discount: { type: 'FIXED', value: 0 } }, 'discount.value'],
    ['a fractional amount', { discount: { type: 'FIXED', value: 10.5 } }, 'discount.value'],
    [
      'a window that ends before it starts',
      { issueWindow: { startsAt: '2026-01-02T00:00:00Z', endsAt: '2026-01-01T00:00:00Z' } },
      'issueWindow.endsAt',
    ],
    ['no validity at all', { validity: {} }, 'validity'],
    ['a shared code on a non-CODE policy', { code: 'WELCOME10' }, 'code'],
    ['an EVENT policy without trigger', { issueMethod: 'EVENT', totalQuantity: null }, 'triggerEvent'],
    ['an unknown field', { discountOverride: 1 }, ''],
    ['a date without time zone', { issueWindow: { startsAt: '2026-01-01T00:00:00' } }, 'issueWindow.startsAt'],
  ])('refuses %s', (_label, change, path) => {
    const result = policyCreateSchema.safeParse({ ...validInput, ...change });
    expect(result.success).toBe(false);
    expect(result.error?.issues.map((i) => i.path.join('.'))).toContain(path);
  });
});

describe('policy changes', () => {
  it('pauses, resumes and ends a policy', () => {
    expect(planPolicyChange(base, { status: 'PAUSED' })).toEqual({ status: 'PAUSED' });
    expect(planPolicyChange({ ...base, status: 'PAUSED' }, { status: 'ACTIVE' })).toEqual({ status: 'ACTIVE' });
    expect(planPolicyChange(base, { status: 'ENDED' })).toEqual({ status: 'ENDED' });
  });

  it('never reopens an ENDED policy', () => {
    expect(codeOf(() => planPolicyChange({ ...base, status: 'ENDED' }, { status: 'ACTIVE' }))).toBe('CONFLICT');
  });

  it('raises the quantity but never lowers it', () => {
    expect(planPolicyChange(base, { totalQuantity: 150 })).toEqual({ totalQuantity: 150 });
    expect(codeOf(() => planPolicyChange(base, { totalQuantity: 99 }))).toBe('VALIDATION_FAILED');
    expect(codeOf(() => planPolicyChange({ ...base, totalQuantity: null }, { totalQuantity: 10 }))).toBe('VALIDATION_FAILED');
  });

  it('extends the window, or opens its end, but never shortens it', () => {
    expect(planPolicyChange(base, { issueWindow: { endsAt: '2026-03-01T00:00:00Z' } })).toEqual({
      issueEndsAt: new Date('2026-03-01T00:00:00Z'),
    });
    expect(planPolicyChange(base, { issueWindow: { endsAt: null } })).toEqual({ issueEndsAt: null });
    expect(codeOf(() => planPolicyChange(base, { issueWindow: { endsAt: '2026-01-15T00:00:00Z' } }))).toBe('VALIDATION_FAILED');
    expect(codeOf(() => planPolicyChange(base, { issueWindow: { endsAt: '2025-12-01T00:00:00Z' } }))).toBe('VALIDATION_FAILED');
  });
});

describe('issuing window and status', () => {
  it('issues only while ACTIVE and inside [startsAt, endsAt)', () => {
    expect(issueRefusal(base, new Date('2026-01-15T00:00:00Z'))).toBeNull();
    expect(issueRefusal(base, new Date('2025-12-31T23:59:59Z'))?.code).toBe('OUTSIDE_ISSUE_WINDOW');
    expect(issueRefusal(base, new Date('2026-02-01T00:00:00Z'))?.code).toBe('OUTSIDE_ISSUE_WINDOW');
    expect(issueRefusal({ ...base, status: 'PAUSED' }, new Date('2026-01-15T00:00:00Z'))?.code).toBe('POLICY_NOT_ACTIVE');
    expect(issueRefusal({ ...base, issueEndsAt: null }, new Date('2030-01-01T00:00:00Z'))).toBeNull();
  });
});

describe('coupon validity', () => {
  const issuedAt = new Date('2026-01-10T12:00:00Z');

  it('expires after the given days', () => {
    expect(couponExpiry({ validDays: 7, validUntil: null }, issuedAt)).toEqual(new Date('2026-01-17T12:00:00Z'));
  });

  it('expires at the earlier of issuedAt + days and until', () => {
    const until = new Date('2026-01-12T00:00:00Z');
    expect(couponExpiry({ validDays: 7, validUntil: until }, issuedAt)).toEqual(until);
    expect(couponExpiry({ validDays: 1, validUntil: new Date('2026-06-01T00:00:00Z') }, issuedAt)).toEqual(
      new Date('2026-01-11T12:00:00Z'),
    );
  });

  it('expires at until when no days are given', () => {
    const until = new Date('2026-03-01T00:00:00Z');
    expect(couponExpiry({ validDays: null, validUntil: until }, issuedAt)).toEqual(until);
  });
});
