import { requestOutcomesOf } from './job-metrics';

describe('issue requests of a finished job', () => {
  const sold = { code: 'SOLD_OUT', message: 'x' };

  it('reads the answers of batches, grants and user events, a granted coupon counting as succeeded', () => {
    expect(requestOutcomesOf('issue-batch', { results: [{ outcome: 'succeeded', result: {} }, { outcome: 'rejected', reason: sold }] }).map((o) => o.outcome)).toEqual(['succeeded', 'rejected']);
    expect(
      requestOutcomesOf('direct-issue', { outcome: 'succeeded', result: { results: [{ userId: 'a', outcome: 'issued' }, { userId: 'b', outcome: 'rejected', reason: sold }, { userId: 'c', outcome: 'failed' }] } }),
    ).toEqual([expect.objectContaining({ outcome: 'succeeded' }), expect.objectContaining({ outcome: 'rejected', reason: sold }), expect.objectContaining({ outcome: 'failed' })]);
    expect(requestOutcomesOf('user-event', { outcome: 'succeeded', result: { policies: [{ policyId: 'p', outcome: 'issued' }] } })).toEqual([expect.objectContaining({ outcome: 'succeeded' })]);
    expect(requestOutcomesOf('generate-codes', { outcome: 'succeeded', result: {} })).toEqual([]);
    expect(requestOutcomesOf('issue-batch', undefined)).toEqual([]);
  });
});
