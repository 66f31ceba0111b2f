import type { DirectIssueReturn, UserEventReturn } from '../queues/results';
import { requestOutcomesOf } from './job-metrics';

describe('issue requests of a finished job', () => {
  const sold = { code: 'SOLD_OUT', message: 'x' };
  const coupon = {
    id: 'c1',
    policyId: 'p',
    userId: 'u',
    status: 'AVAILABLE' as const,
    issuedAt: '2030-01-01T00:00:00.000Z',
    expiresAt: '2030-01-08T00:00:00.000Z',
  };

  it('reads the answers of batches, grants and user events, a granted coupon counting as succeeded', () => {
    expect(
      requestOutcomesOf('issue-batch', {
        results: [
          { outcome: 'succeeded', result: coupon },
          { outcome: 'rejected', reason: sold },
        ],
      }).map((o) => o.outcome),
    ).toEqual(['succeeded', 'rejected']);
    const grant: DirectIssueReturn = {
      outcome: 'succeeded',
      result: {
        policyId: 'p',
        requested: 3,
        issued: 1,
        rejected: 1,
        failed: 1,
        rejectedBy: { SOLD_OUT: 1 },
        results: [
          { userId: 'a', outcome: 'issued', couponId: 'c1' },
          { userId: 'b', outcome: 'rejected', reason: sold },
          { userId: 'c', outcome: 'failed' },
        ],
      },
    };
    expect(requestOutcomesOf('direct-issue', grant)).toEqual([
      expect.objectContaining({ outcome: 'succeeded' }),
      expect.objectContaining({ outcome: 'rejected', reason: sold }),
      expect.objectContaining({ outcome: 'failed' }),
    ]);
    const event: UserEventReturn = {
      outcome: 'succeeded',
      result: { eventId: 'ev', type: 'USER_SIGNED_UP', userId: 'u', policies: [{ policyId: 'p', outcome: 'issued', couponId: 'c1' }] },
    };
    expect(requestOutcomesOf('user-event', event)).toEqual([expect.objectContaining({ outcome: 'succeeded' })]);
    expect(requestOutcomesOf('generate-codes', { outcome: 'succeeded', result: {} })).toEqual([]);
    expect(requestOutcomesOf('issue-batch', undefined)).toEqual([]);
    // A coupon that is not one: the batch does not read, and counts nothing.
    expect(requestOutcomesOf('issue-batch', { results: [{ outcome: 'succeeded', result: {} }] })).toEqual([]);
  });
});
