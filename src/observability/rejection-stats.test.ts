// Which requests of a finished issue-queue job count as rejections, per job kind.
import type { DirectIssueReturn, IssueBatchReturn, IssueOutcome, UserEventReturn } from '../queues/results';
import { rejectionsOf } from './rejection-stats';

const rejected = (code: string) => ({ outcome: 'rejected' as const, reason: { code, message: '' } });
const coupon = {
  id: 'c1',
  policyId: 'p1',
  userId: 'u1',
  status: 'AVAILABLE' as const,
  issuedAt: '2030-01-01T00:00:00.000Z',
  expiresAt: '2030-01-08T00:00:00.000Z',
};
const issued: IssueOutcome = { outcome: 'succeeded', result: coupon };

describe('rejectionsOf', () => {
  it('reads a batch: each rejected request with its own policy, none for the issued or failed ones', () => {
    const job = {
      name: 'issue-batch',
      data: { requests: [{ policyId: 'p1' }, { policyId: 'p1' }, { policyId: null }, { policyId: 'p2' }, { policyId: 'p2' }] },
    };
    const result: IssueBatchReturn = {
      results: [
        issued,
        rejected('SOLD_OUT'),
        rejected('CODE_NOT_FOUND'),
        { outcome: 'failed', reason: { code: 'INTERNAL', message: '' } },
        rejected('USER_LIMIT_REACHED'),
      ],
    };
    expect(rejectionsOf(job, result)).toEqual([
      { policyId: 'p1', code: 'SOLD_OUT' },
      { policyId: null, code: 'CODE_NOT_FOUND' },
      { policyId: 'p2', code: 'USER_LIMIT_REACHED' },
    ]);
  });

  it('reads a direct grant and a user event', () => {
    const grant: DirectIssueReturn = {
      outcome: 'succeeded',
      result: {
        policyId: 'pd',
        requested: 2,
        issued: 1,
        rejected: 1,
        failed: 0,
        rejectedBy: { SOLD_OUT: 1 },
        results: [
          { userId: 'a', outcome: 'issued', couponId: 'c' },
          { userId: 'b', ...rejected('SOLD_OUT') },
        ],
      },
    };
    expect(rejectionsOf({ name: 'direct-issue', data: {} }, grant)).toEqual([{ policyId: 'pd', code: 'SOLD_OUT' }]);
    const event: UserEventReturn = {
      outcome: 'succeeded',
      result: {
        eventId: 'ev',
        type: 'USER_SIGNED_UP',
        userId: 'u',
        policies: [
          { policyId: 'e1', outcome: 'issued', couponId: 'c' },
          { policyId: 'e2', ...rejected('USER_LIMIT_REACHED') },
        ],
      },
    };
    expect(rejectionsOf({ name: 'user-event', data: {} }, event)).toEqual([{ policyId: 'e2', code: 'USER_LIMIT_REACHED' }]);
  });

  it('counts nothing for other jobs or results that do not read as their kind', () => {
    expect(rejectionsOf({ name: 'generate-codes', data: {} }, { outcome: 'succeeded', result: {} })).toEqual([]);
    expect(rejectionsOf({ name: 'issue-batch', data: {} }, null)).toEqual([]);
    expect(rejectionsOf({ name: 'direct-issue', data: {} }, { outcome: 'rejected', reason: { code: 'X' } })).toEqual([]);
    // A batch whose entry is not an outcome, a grant whose result lacks its counts.
    expect(
      rejectionsOf(
        { name: 'issue-batch', data: { requests: [{ policyId: 'p1' }] } },
        { results: [{ outcome: 'rejected', reason: 'SOLD_OUT' }] },
      ),
    ).toEqual([]);
    expect(
      rejectionsOf(
        { name: 'direct-issue', data: {} },
        { outcome: 'succeeded', result: { policyId: 'pd', results: [{ userId: 'b', ...rejected('SOLD_OUT') }] } },
      ),
    ).toEqual([]);
  });
});
