// The result contracts: what the workers write reads back unchanged, key order included (it is the
// API's JSON), and an issue request's outcome record reads back as stored.
import { parseStoredOutcome, storedOutcomeSchema } from './outcomes';
import {
  jobOutcomeSchemaOf,
  paymentReturnSchema,
  type DirectIssueReturn,
  type GenerateCodesReturn,
  type PaymentReturn,
  type ReservationActionReturn,
  type ReserveReturn,
} from './results';

const coupon = {
  id: 'c1',
  policyId: 'p1',
  userId: 'u1',
  status: 'RESERVED' as const,
  issuedAt: '2030-01-01T00:00:00.000Z',
  expiresAt: '2030-01-08T00:00:00.000Z',
  reservedAt: '2030-01-02T00:00:00.000Z',
  orderId: 'o1',
  reservationId: 'r1',
};
const sold = { code: 'SOLD_OUT', message: 'Sold out.' };
const silentLog = { warn: jest.fn() } as unknown as Parameters<typeof parseStoredOutcome>[2];
const asStored = (value: unknown) => JSON.parse(JSON.stringify(value)) as unknown;

describe('job results', () => {
  it('read back as written, in the same key order', () => {
    const grant: DirectIssueReturn = {
      outcome: 'succeeded',
      result: {
        policyId: 'p',
        requested: 2,
        issued: 1,
        rejected: 1,
        failed: 0,
        rejectedBy: { SOLD_OUT: 1 },
        results: [
          { userId: 'a', outcome: 'issued', couponId: 'c' },
          { userId: 'b', outcome: 'rejected', reason: sold },
        ],
      },
    };
    const reservation = {
      reservationId: 'r1',
      couponId: 'c1',
      orderId: 'o1',
      discountAmount: 10,
      expiresAt: '2030-01-01T00:10:00.000Z',
      userId: 'u1',
      orderAmount: 100,
      status: 'CONFIRMED' as const,
      endedAt: '2030-01-01T00:01:00.000Z',
      endReason: 'PAYMENT_COMPLETED',
      createdAt: '2030-01-01T00:00:00.000Z',
    };
    const payment: PaymentReturn = { outcome: 'succeeded', result: { eventId: 'e1', outcome: 'APPLIED', reservation } };
    const duplicate: PaymentReturn = {
      outcome: 'succeeded',
      result: { eventId: 'e1', outcome: 'DUPLICATE', earlier: { outcome: 'IGNORED', reason: sold } },
    };
    const reserved: ReserveReturn = {
      outcome: 'succeeded',
      result: { reservationId: 'r1', couponId: 'c1', orderId: 'o1', discountAmount: 10, expiresAt: '2030-01-01T00:10:00.000Z' },
    };
    const cancelled: ReservationActionReturn = { outcome: 'succeeded', result: { ...reservation, status: 'CANCELLED' } };
    const generated: GenerateCodesReturn = { outcome: 'succeeded', result: { policyId: 'p', length: 12, prefix: 'BF-', count: 500 } };
    const generatedBare: GenerateCodesReturn = { outcome: 'succeeded', result: { policyId: 'p', length: 12, count: 500 } };
    for (const [kind, value] of [
      ['direct-issue', grant],
      ['payment', payment],
      ['payment', duplicate],
      ['reserve', reserved],
      ['reserve', { outcome: 'rejected', reason: { code: 'COUPON_NOT_USABLE', message: 'no' } }],
      ['cancel', cancelled],
      ['confirm', { outcome: 'succeeded', result: reservation }],
      ['generate-codes', generated],
      ['generate-codes', generatedBare],
    ] as const) {
      const read = jobOutcomeSchemaOf(kind).parse(asStored(value));
      expect(JSON.stringify(read)).toBe(JSON.stringify(value));
    }
    // A job of a kind without a schema of its own is passed on with its result unread.
    expect(jobOutcomeSchemaOf('some-future-kind').parse({ outcome: 'succeeded', result: { count: 5, extra: [1] } })).toEqual({
      outcome: 'succeeded',
      result: { count: 5, extra: [1] },
    });
  });

  it('refuse what the kind does not return', () => {
    expect(paymentReturnSchema.safeParse({ outcome: 'succeeded', result: { eventId: 'e1', outcome: 'MAYBE' } }).success).toBe(false);
    expect(jobOutcomeSchemaOf('direct-issue').safeParse({ outcome: 'succeeded', result: { policyId: 'p' } }).success).toBe(false);
    expect(jobOutcomeSchemaOf('reserve').safeParse({ outcome: 'succeeded', result: { reservationId: 'r1' } }).success).toBe(false);
    expect(jobOutcomeSchemaOf('cancel').safeParse({ outcome: 'succeeded', result: { reservationId: 'r1', status: 'GONE' } }).success).toBe(
      false,
    );
    expect(jobOutcomeSchemaOf('generate-codes').safeParse({ outcome: 'succeeded', result: { count: 5 } }).success).toBe(false);
  });
});

describe('outcome records', () => {
  it('read back as written', () => {
    const record = { s: 'succeeded' as const, u: 'u1', c: 1, f: 2, r: coupon };
    expect(JSON.stringify(parseStoredOutcome(JSON.stringify(record), 'iss_x.0', silentLog))).toBe(JSON.stringify(record));
    const refused = { s: 'rejected' as const, u: 'u1', c: 1, f: 1, e: sold, w: 1 as const };
    expect(parseStoredOutcome(refused, 'iss_x.1', silentLog)).toEqual(storedOutcomeSchema.parse(refused));
  });

  it('read as none, with a warning, when they do not read', () => {
    const log = { warn: jest.fn() } as unknown as Parameters<typeof parseStoredOutcome>[2];
    expect(parseStoredOutcome('{"s":"won"', 'iss_x.0', log)).toBeNull();
    expect(parseStoredOutcome(JSON.stringify({ s: 'won', u: 'u1', c: 1 }), 'iss_x.0', log)).toBeNull();
    expect(parseStoredOutcome({ s: 'succeeded', u: 'u1', c: 1, r: { id: 'c1' } }, 'iss_x.0', log)).toBeNull();
    expect((log as unknown as { warn: jest.Mock }).warn).toHaveBeenCalledTimes(3);
  });
});
