import { rateLimitKeyPrefixes, redisKeys, redisKeysUnder, statsAnswers } from './redis-keys';

// A running deployment has these exact strings in Redis: a change here orphans its keys (admission
// state, claims, outcomes, Idempotency-Key records...) and must be deliberate.
describe('Redis key names', () => {
  const k = redisKeysUnder('coupon');

  it('keeps every key of a deployment as it is', () => {
    expect(k.admission('p1')).toEqual({
      meta: 'coupon:adm:{p1}:meta',
      stock: 'coupon:adm:{p1}:stock',
      free: 'coupon:adm:{p1}:free',
      users: 'coupon:adm:{p1}:users',
      pending: 'coupon:adm:{p1}:pending',
    });
    expect(k.admissionPolicies()).toBe('coupon:adm:policies');
    expect(k.admissionRebuildLock('p1')).toBe('coupon:adm:lock:rebuild:{p1}');
    expect(k.admissionReconcileLock()).toBe('coupon:adm:lock:reconcile');
    expect(k.couponLock('c1')).toBe('coupon:lock:coupon:{c1}');
    expect(k.inboxSweepLock()).toBe('coupon:lock:inbox-sweep');
    expect(k.codeClaim('ab12')).toBe('coupon:code:{ab12}');
    expect(k.userCoupons('u1')).toBe('coupon:ucl:{u1}');
    expect(k.policyRejections('p1')).toBe('coupon:stats:{p1}:rejected');
    expect(k.allRejections()).toBe('coupon:stats:rejected');
    expect(k.statsAnswer(statsAnswers.policy('p1'))).toBe('coupon:stats:cache:policy:{p1}');
    expect(k.statsAnswer(statsAnswers.overall('1h', 10))).toBe('coupon:stats:cache:all:1h:10');
    expect(k.statsAnswer(statsAnswers.user('u1'))).toBe('coupon:stats:cache:user:{u1}');
    expect(k.statsAnswerLock(statsAnswers.policy('p1'))).toBe('coupon:stats:cache:policy:{p1}:lock');
    expect(k.idempotency('rsv_0123')).toBe('coupon:idem:rsv_0123');
    expect(k.outcomes('iss_42')).toBe('coupon:out:iss_42');
    expect(k.outcomesChannel()).toBe('coupon:outcomes');
    expect(k.checkoutFinishedChannel()).toBe('coupon:checkout-finished');
    expect(k.policyChangedChannel()).toBe('coupon:policy-changed');
    expect(k.rateLimitNamespace()).toBe('coupon:rl');
    expect(rateLimitKeyPrefixes(k.rateLimitNamespace())).toEqual({
      address: 'coupon:rl:ip',
      user: 'coupon:rl:user',
      codeUser: 'coupon:rl:code-user',
      codeAddress: 'coupon:rl:code-ip',
      boardAuth: 'coupon:rl:board-auth',
    });
  });

  /** The hash tag Redis Cluster slots a key by: what is between the first `{` and the next `}`, if anything. */
  const hashTag = (key: string): string | null => {
    const open = key.indexOf('{');
    const close = open < 0 ? -1 : key.indexOf('}', open + 1);
    return close > open + 1 ? key.slice(open + 1, close) : null;
  };

  it('keeps the hash tags where cluster slotting needs them', () => {
    // The Lua scripts touch a policy's five admission keys at once: one slot, the policy's.
    for (const key of Object.values(k.admission('p1'))) expect(hashTag(key)).toBe('p1');
    // The families keyed by an id spread over the slots by that id.
    expect(hashTag(k.admissionRebuildLock('p1'))).toBe('p1');
    expect(hashTag(k.couponLock('c1'))).toBe('c1');
    expect(hashTag(k.codeClaim('ab12'))).toBe('ab12');
    expect(hashTag(k.userCoupons('u1'))).toBe('u1');
    expect(hashTag(k.policyRejections('p1'))).toBe('p1');
    expect(hashTag(k.statsAnswer(statsAnswers.policy('p1')))).toBe('p1');
    expect(hashTag(k.statsAnswerLock(statsAnswers.policy('p1')))).toBe('p1');
    expect(hashTag(k.statsAnswer(statsAnswers.user('u1')))).toBe('u1');
    // Nothing else carries a tag: one stray brace would pull a whole family into one slot.
    for (const key of [
      k.admissionPolicies(),
      k.admissionReconcileLock(),
      k.inboxSweepLock(),
      k.allRejections(),
      k.idempotency('rsv_1'),
      k.outcomes('iss_1'),
      k.rateLimitNamespace(),
    ]) {
      expect(hashTag(key)).toBeNull();
    }
  });

  it('puts everything under the prefix it is given, and by default under QUEUE_PREFIX', () => {
    expect(redisKeys('other').userCoupons('u1')).toBe('other:ucl:{u1}');
    expect(redisKeys().outcomesChannel()).toBe(`${process.env.QUEUE_PREFIX ?? 'coupon'}:outcomes`);
    expect(redisKeys('coupon').allRejections()).toBe('coupon:stats:rejected');
  });
});
