import fc from 'fast-check';
import {
  discountFor,
  foreignPayer,
  isSameReserveRequest,
  planPayment,
  usability,
  type DiscountRule,
  type HeldCouponFacts,
  type ReservationFacts,
} from './checkout-rules';

const fixed = (value: number, extra: Partial<DiscountRule> = {}): DiscountRule => ({
  type: 'FIXED',
  value,
  maxDiscountAmount: null,
  minOrderAmount: null,
  ...extra,
});
const percent = (value: number, extra: Partial<DiscountRule> = {}): DiscountRule => ({
  type: 'PERCENTAGE',
  value,
  maxDiscountAmount: null,
  minOrderAmount: null,
  ...extra,
});

describe('discountFor', () => {
  it('takes a fixed amount off, never more than the order', () => {
    expect(discountFor(fixed(3000), 50_000)).toBe(3000);
    expect(discountFor(fixed(3000), 2000)).toBe(2000);
    expect(discountFor(fixed(3000), 0)).toBe(0);
  });

  it('takes a percentage rounded down to the unit, bounded by its cap', () => {
    expect(discountFor(percent(10), 12_345)).toBe(1234);
    expect(discountFor(percent(15, { maxDiscountAmount: 5000 }), 100_000)).toBe(5000);
    expect(discountFor(percent(15, { maxDiscountAmount: 5000 }), 10_000)).toBe(1500);
    expect(discountFor(percent(100), 777)).toBe(777);
    expect(discountFor(percent(1), 99)).toBe(0);
  });

  it('refuses an amount that is not a non-negative integer', () => {
    expect(() => discountFor(fixed(1), -1)).toThrow(RangeError);
    expect(() => discountFor(fixed(1), 1.5)).toThrow(RangeError);
  });

  const rules = fc
    .record({
      type: fc.constantFrom('FIXED' as const, 'PERCENTAGE' as const),
      value: fc.integer({ min: 1, max: 1_000_000_000_000 }),
      maxDiscountAmount: fc.option(fc.integer({ min: 1, max: 1_000_000_000_000 }), { nil: null }),
      minOrderAmount: fc.constant(null),
    })
    .map((r) => (r.type === 'PERCENTAGE' ? { ...r, value: (r.value % 100) + 1 } : r));

  it('is never negative, never above the order amount, never above the cap (property)', () => {
    fc.assert(
      fc.property(rules, fc.integer({ min: 0, max: 1_000_000_000_000 }), (rule, orderAmount) => {
        const d = discountFor(rule, orderAmount);
        expect(Number.isSafeInteger(d)).toBe(true);
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThanOrEqual(orderAmount);
        if (rule.maxDiscountAmount !== null) expect(d).toBeLessThanOrEqual(rule.maxDiscountAmount);
        if (rule.type === 'FIXED') expect(d).toBe(Math.min(rule.value, orderAmount, rule.maxDiscountAmount ?? Infinity));
        else expect(d).toBeLessThanOrEqual((orderAmount * rule.value) / 100);
      }),
      { numRuns: 2000 },
    );
  });

  it('grows with the order amount (property)', () => {
    fc.assert(
      fc.property(rules, fc.integer({ min: 0, max: 1_000_000_000 }), fc.integer({ min: 0, max: 1_000_000_000 }), (rule, a, b) => {
        const [lo, hi] = a <= b ? [a, b] : [b, a];
        expect(discountFor(rule, lo)).toBeLessThanOrEqual(discountFor(rule, hi));
      }),
    );
  });
});

describe('usability', () => {
  const now = new Date('2026-01-01T00:00:00Z');
  const later = new Date('2026-02-01T00:00:00Z');
  const earlier = new Date('2025-12-01T00:00:00Z');

  it('is usable when issued, unexpired and above the minimum', () => {
    expect(usability({ status: 'ISSUED', expiresAt: later }, fixed(3000, { minOrderAmount: 10_000 }), 10_000, now)).toEqual({
      usable: true,
      discountAmount: 3000,
    });
  });

  it('says why not', () => {
    const code = (u: ReturnType<typeof usability>) => (u.usable ? null : u.reason.code);
    expect(code(usability({ status: 'ISSUED', expiresAt: earlier }, fixed(1), 10, now))).toBe('COUPON_EXPIRED');
    expect(code(usability({ status: 'ISSUED', expiresAt: now }, fixed(1), 10, now))).toBe('COUPON_EXPIRED');
    expect(code(usability({ status: 'EXPIRED', expiresAt: later }, fixed(1), 10, now))).toBe('COUPON_EXPIRED');
    expect(code(usability({ status: 'RESERVED', expiresAt: later }, fixed(1), 10, now))).toBe('COUPON_NOT_AVAILABLE');
    expect(code(usability({ status: 'USED', expiresAt: later }, fixed(1), 10, now))).toBe('COUPON_NOT_AVAILABLE');
    expect(code(usability({ status: 'ISSUED', expiresAt: later }, fixed(1, { minOrderAmount: 11 }), 10, now))).toBe('ORDER_AMOUNT_TOO_LOW');
  });
});

describe('planPayment', () => {
  const now = new Date('2026-01-01T00:00:00Z');
  const valid = new Date('2026-02-01T00:00:00Z');
  const opts = { restoreOnRefund: true, now };
  const r = (status: ReservationFacts['status'], refundedAt: Date | null = null): ReservationFacts => ({ id: 'r1', status, refundedAt });
  const c = (status: HeldCouponFacts['status'], reservationId: string | null, expiresAt = valid): HeldCouponFacts => ({
    status,
    reservationId,
    expiresAt,
  });

  it('confirms a pending reservation on COMPLETED, and only once', () => {
    expect(planPayment('PAYMENT_COMPLETED', r('PENDING'), c('RESERVED', 'r1'), opts)).toEqual({ action: 'confirm' });
    expect(planPayment('PAYMENT_COMPLETED', r('CONFIRMED'), c('USED', 'r1'), opts)).toMatchObject({ action: 'none', conflict: false });
  });

  it('confirms a late payment when the coupon is still free and valid', () => {
    expect(planPayment('PAYMENT_COMPLETED', r('EXPIRED'), c('ISSUED', null), opts)).toEqual({ action: 'confirm-late' });
    expect(planPayment('PAYMENT_COMPLETED', r('CANCELLED'), c('ISSUED', null), opts)).toEqual({ action: 'confirm-late' });
  });

  it('records a conflict when a late payment finds the coupon taken or expired', () => {
    expect(planPayment('PAYMENT_COMPLETED', r('EXPIRED'), c('RESERVED', 'r2'), opts)).toMatchObject({
      action: 'none',
      conflict: true,
      reason: { code: 'COUPON_NOT_AVAILABLE' },
    });
    expect(planPayment('PAYMENT_COMPLETED', r('EXPIRED'), c('USED', 'r2'), opts)).toMatchObject({ action: 'none', conflict: true });
    expect(planPayment('PAYMENT_COMPLETED', r('EXPIRED'), c('ISSUED', null, now), opts)).toMatchObject({
      action: 'none',
      conflict: true,
      reason: { code: 'COUPON_EXPIRED' },
    });
  });

  it('releases a pending reservation on FAILED or CANCELLED, and nothing else', () => {
    for (const type of ['PAYMENT_FAILED', 'PAYMENT_CANCELLED'] as const) {
      expect(planPayment(type, r('PENDING'), c('RESERVED', 'r1'), opts)).toEqual({ action: 'release' });
      for (const status of ['CONFIRMED', 'CANCELLED', 'EXPIRED'] as const) {
        expect(planPayment(type, r(status), c('USED', 'r1'), opts)).toMatchObject({ action: 'none', conflict: false });
      }
    }
  });

  it('restores a refunded coupon when the policy allows and it is still valid', () => {
    expect(planPayment('PAYMENT_REFUNDED', r('CONFIRMED'), c('USED', 'r1'), opts)).toEqual({ action: 'restore' });
    expect(planPayment('PAYMENT_REFUNDED', r('CONFIRMED'), c('USED', 'r1'), { ...opts, restoreOnRefund: false })).toMatchObject({
      action: 'none',
    });
    expect(planPayment('PAYMENT_REFUNDED', r('CONFIRMED'), c('USED', 'r1', now), opts)).toMatchObject({
      action: 'none',
      reason: { code: 'COUPON_EXPIRED' },
    });
    expect(planPayment('PAYMENT_REFUNDED', r('CONFIRMED', now), c('ISSUED', null), opts)).toMatchObject({ action: 'none' });
  });

  it('makes a refund that overtook its payment wait, also when the payment will be a late one', () => {
    expect(planPayment('PAYMENT_REFUNDED', r('PENDING'), c('RESERVED', 'r1'), opts)).toMatchObject({ action: 'wait' });
    expect(planPayment('PAYMENT_REFUNDED', r('EXPIRED'), c('ISSUED', null), opts)).toMatchObject({ action: 'wait' });
    expect(planPayment('PAYMENT_REFUNDED', r('CANCELLED'), c('ISSUED', null), opts)).toMatchObject({ action: 'wait' });
  });

  it('ends in the same state whichever of COMPLETED and FAILED comes first (property)', () => {
    // Applies a plan to a tiny model of the two rows, the way the worker does.
    type World = { reservation: ReservationFacts; coupon: HeldCouponFacts };
    const apply = (w: World, type: Parameters<typeof planPayment>[0]): World => {
      const plan = planPayment(type, w.reservation, w.coupon, opts);
      switch (plan.action) {
        case 'confirm':
        case 'confirm-late':
          return {
            reservation: { ...w.reservation, status: 'CONFIRMED' },
            coupon: { ...w.coupon, status: 'USED', reservationId: w.reservation.id },
          };
        case 'release':
          return { reservation: { ...w.reservation, status: 'CANCELLED' }, coupon: { ...w.coupon, status: 'ISSUED', reservationId: null } };
        default:
          return w;
      }
    };
    const types = fc.constantFrom('PAYMENT_COMPLETED' as const, 'PAYMENT_FAILED' as const, 'PAYMENT_CANCELLED' as const);
    fc.assert(
      fc.property(fc.array(types, { minLength: 1, maxLength: 4 }), (events) => {
        const start: World = { reservation: r('PENDING'), coupon: c('RESERVED', 'r1') };
        const inOrder = events.reduce(apply, start);
        const reversed = [...events].reverse().reduce(apply, start);
        // Any COMPLETED among them means the coupon ends USED, in either order.
        const paid = events.includes('PAYMENT_COMPLETED');
        expect(inOrder.coupon.status).toBe(paid ? 'USED' : 'ISSUED');
        expect(reversed.coupon.status).toBe(inOrder.coupon.status);
      }),
    );
  });
});

describe('isSameReserveRequest', () => {
  const made = { couponId: 'c1', orderId: 'o1', orderAmount: 50_000, fingerprint: 'fp-a' };

  it('tells a replay from another body under the key by the fingerprint', () => {
    expect(isSameReserveRequest(made, { ...made })).toBe(true);
    expect(isSameReserveRequest(made, { ...made, fingerprint: 'fp-b' })).toBe(false);
  });

  it('compares the columns of a reservation made before fingerprints were kept', () => {
    const legacy = { ...made, fingerprint: null };
    expect(isSameReserveRequest(legacy, { ...made, fingerprint: 'fp-a' })).toBe(true);
    expect(isSameReserveRequest(legacy, { ...made, couponId: 'c2' })).toBe(false);
    expect(isSameReserveRequest(legacy, { ...made, orderId: 'o2' })).toBe(false);
    expect(isSameReserveRequest(legacy, { ...made, orderAmount: 50_001 })).toBe(false);
  });
});

describe('foreignPayer', () => {
  it("records an event naming someone other than the order's owner as a conflict", () => {
    expect(foreignPayer('mallory', 'alice')).toMatchObject({ action: 'none', conflict: true, reason: { code: 'ORDER_NOT_OWNED' } });
  });

  it('lets the event go on without a user, for the owner, or for an order nobody owns yet', () => {
    expect(foreignPayer(undefined, 'alice')).toBeNull();
    expect(foreignPayer('alice', 'alice')).toBeNull();
    expect(foreignPayer('alice', null)).toBeNull();
  });
});
