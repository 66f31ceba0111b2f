// Which requests of a finished issue-queue job count as rejections, per job kind.
import { rejectionsOf } from './rejection-stats';

const rejected = (code: string) => ({ outcome: 'rejected', reason: { code, message: '' } });
const issued = { outcome: 'succeeded', result: { id: 'c1' } };

describe('rejectionsOf', () => {
  it('reads a batch: each rejected request with its own policy, none for the issued or failed ones', () => {
    const job = { name: 'issue-batch', data: { requests: [{ policyId: 'p1' }, { policyId: 'p1' }, { policyId: null }, { policyId: 'p2' }, { policyId: 'p2' }] } };
    const result = { results: [issued, rejected('SOLD_OUT'), rejected('CODE_NOT_FOUND'), { outcome: 'failed', reason: { code: 'INTERNAL', message: '' } }, rejected('USER_LIMIT_REACHED')] };
    expect(rejectionsOf(job, result)).toEqual([
      { policyId: 'p1', code: 'SOLD_OUT' },
      { policyId: null, code: 'CODE_NOT_FOUND' },
      { policyId: 'p2', code: 'USER_LIMIT_REACHED' },
    ]);
  });

  it('reads a direct grant and a user event', () => {
    const grant = {
      outcome: 'succeeded',
      result: { policyId: 'pd', results: [{ userId: 'a', outcome: 'issued', couponId: 'c' }, { userId: 'b', outcome: 'rejected', reason: { code: 'SOLD_OUT', message: '' } }] },
    };
    expect(rejectionsOf({ name: 'direct-issue', data: {} }, grant)).toEqual([{ policyId: 'pd', code: 'SOLD_OUT' }]);
    const event = {
      outcome: 'succeeded',
      result: { policies: [{ policyId: 'e1', outcome: 'issued' }, { policyId: 'e2', outcome: 'rejected', reason: { code: 'USER_LIMIT_REACHED', message: '' } }] },
    };
    expect(rejectionsOf({ name: 'user-event', data: {} }, event)).toEqual([{ policyId: 'e2', code: 'USER_LIMIT_REACHED' }]);
  });

  it('counts nothing for other jobs or results it cannot read', () => {
    expect(rejectionsOf({ name: 'generate-codes', data: {} }, { outcome: 'succeeded', result: {} })).toEqual([]);
    expect(rejectionsOf({ name: 'issue-batch', data: {} }, null)).toEqual([]);
    expect(rejectionsOf({ name: 'direct-issue', data: {} }, { outcome: 'rejected', reason: { code: 'X' } })).toEqual([]);
  });
});
