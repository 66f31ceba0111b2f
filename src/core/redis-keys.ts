// Every Redis key and channel the service names, in one place, the way BullMQ keeps its own suffixes
// in one QueueKeys object. Everything lives under the deployment's QUEUE_PREFIX (`<p>` below), so two
// deployments sharing a Redis never see each other's state. These strings are what a running
// deployment has in Redis: changing one orphans the old keys (src/core/redis-keys.test.ts pins them).
// Lua scripts take their keys as KEYS[] from here and build none of their own.
//
// `{...}` is a Redis Cluster hash tag: only the part inside the braces picks the slot. A policy's
// five admission keys share `{policyId}` so one script may touch them together; the other tags
// spread a family over the slots by its id.
//
// family                          type     bound                                          written by
// <p>:adm:{policyId}:meta         hash     5 min (a policy that does not exist: 30 s)     web (admin changes), worker (warm-up, misses)
// <p>:adm:{policyId}:stock        hash     dropped by the reconciler once the policy is   web and worker (admission)
// <p>:adm:{policyId}:free         list       ENDED or its issue window closed 10 min ago, web and worker (admission)
// <p>:adm:{policyId}:users        hash       and nothing of it is pending                 web and worker (admission)
// <p>:adm:{policyId}:pending      hash       (src/usecases/reconcile-admissions.ts)            web and worker (admission)
// <p>:adm:policies                set      the policies that have admission state         web and worker (admission), reconciler
// <p>:adm:lock:rebuild:{policyId} redlock  60 s                                           worker (a policy's stock rebuilt)
// <p>:adm:lock:reconcile          redlock  3 x ADMISSION_RECONCILE_INTERVAL_MS (30 s)     worker (the reconciler)
// <p>:lock:coupon:{couponId}      redlock  5 s                                            worker (a reserve)
// <p>:lock:inbox-sweep            redlock  3 x INBOX_SWEEP_INTERVAL_MS, at least 30 s     worker (the inbox sweep)
// <p>:code:{codeHash}             string   claim 10 min; a used code 24 h                 worker (single-use code claims)
// <p>:ucl:{userId}                hash     5 min; deleted at each change of the user's    web (fills), worker (deletes)
//                                            coupons
// <p>:stats:{policyId}:rejected   hash     reason codes of one policy (no TTL: a handful  web and worker (rejection counters)
//                                            of fields per policy that refused requests)
// <p>:stats:rejected              hash     reason codes of the deployment (no TTL)        web and worker (rejection counters)
// <p>:stats:cache:<answer>        string   fresh time + 60 s                              web (stats cache)
// <p>:stats:cache:<answer>:lock   string   20 s (one recomputation at a time)             web (stats cache)
// <p>:idem:<requestId>            string   reserve 1 h; issue 24 h                        web; worker (a reserve's record rebound)
// <p>:out:<batchJobId>            hash     24 h                                           web (pending, refusals), worker (outcomes)
// <p>:outcomes                    channel  -                                              worker publishes, web subscribes
// <p>:policy-changed              channel  -                                              web publishes, every process subscribes
// <p>:rl:ip:<address>             string   RATE_LIMIT_IP_DURATION_S (1 s)                 web (rate limits)
// <p>:rl:user:<userId>            string   RATE_LIMIT_USER_DURATION_S (1 s)               web (rate limits)
// <p>:rl:code-user:<userId>       string   CODE_FAILURE_WINDOW_S / _BLOCK_S (10 / 15 min) web (wrong-code guard)
// <p>:rl:code-ip:<address>        string   CODE_FAILURE_WINDOW_S / _BLOCK_S (10 / 15 min) web (wrong-code guard)
// <p>:rl:board-auth:<address>     string   BULL_BOARD_AUTH_WINDOW_S / _LOCKOUT_S (15 min) web (Bull Board lockout)
// <p>:<queue>:...                 BullMQ   removeOn* of src/queues/connection.ts (RUNBOOK)    BullMQ itself (its own QueueKeys)
//
// The rate limits' keys are rate-limiter-flexible's: `<keyPrefix>:<key>`, keyPrefix from here.
// docs/RUNBOOK.md (Redis memory) gives the same bounds from the operator's side.
import { config } from './config';

/** The keys of one deployment, `prefix` being its QUEUE_PREFIX. */
export function redisKeysUnder(prefix: string) {
  const adm = `${prefix}:adm`;
  return {
    /** A policy's admission state (src/storage/admission/lua/*.lua), all five in the slot of `{policyId}`. */
    admission(policyId: string) {
      const base = `${adm}:{${policyId}}`;
      return {
        meta: `${base}:meta`,
        stock: `${base}:stock`,
        free: `${base}:free`,
        users: `${base}:users`,
        pending: `${base}:pending`,
      };
    },
    /** The set of policies that have admission state, walked by the reconciler. */
    admissionPolicies: () => `${adm}:policies`,
    /** One rebuild of a policy's admission state at a time. */
    admissionRebuildLock: (policyId: string) => `${adm}:lock:rebuild:{${policyId}}`,
    /** One reconciler per deployment. */
    admissionReconcileLock: () => `${adm}:lock:reconcile`,
    /** Concurrent reserves of one coupon queue here rather than decide on the same row. */
    couponLock: (couponId: string) => `${prefix}:lock:coupon:{${couponId}}`,
    /** One inbox sweep per deployment. */
    inboxSweepLock: () => `${prefix}:lock:inbox-sweep`,
    /** The request redeeming a single-use code (its HMAC), then the mark of a used code. */
    codeClaim: (codeHash: string) => `${prefix}:code:{${codeHash}}`,
    /** A user's cached coupon lists: one field per query. */
    userCoupons: (userId: string) => `${prefix}:ucl:{${userId}}`,
    /** Issue rejections of one policy: field = reason code, value = count. */
    policyRejections: (policyId: string) => `${prefix}:stats:{${policyId}}:rejected`,
    /** Every issue rejection of the deployment, also those that name no policy. */
    allRejections: () => `${prefix}:stats:rejected`,
    /** A cached statistics answer (`answer` from statsAnswers). */
    statsAnswer: (answer: string) => `${prefix}:stats:cache:${answer}`,
    /** Held by the process recomputing a statistics answer. */
    statsAnswerLock: (answer: string) => `${prefix}:stats:cache:${answer}:lock`,
    /** The record of an Idempotency-Key, named by the key's request id (src/queues/names.ts). */
    idempotency: (requestId: string) => `${prefix}:idem:${requestId}`,
    /** The outcomes of a batch job's issue requests: field = request index. */
    outcomes: (batchJobId: string) => `${prefix}:out:${batchJobId}`,
    /** Channel: one message per batch a worker finished. */
    outcomesChannel: () => `${prefix}:outcomes`,
    /** Channel: the checkout queue's jobs that finished in one turn of a worker (src/queues/finished.ts). */
    checkoutFinishedChannel: () => `${prefix}:checkout-finished`,
    /** Channel: the id of each policy an admin changed. */
    policyChangedChannel: () => `${prefix}:policy-changed`,
    /** Where the rate limiters' keys go (rateLimitKeyPrefixes). */
    rateLimitNamespace: () => `${prefix}:rl`,
  };
}

export type RedisKeys = ReturnType<typeof redisKeysUnder>;

let current: { prefix: string; keys: RedisKeys } | undefined;

/** The keys of this process's deployment (config().QUEUE_PREFIX), or of another prefix. */
export function redisKeys(prefix: string = config().QUEUE_PREFIX): RedisKeys {
  if (current?.prefix !== prefix) current = { prefix, keys: redisKeysUnder(prefix) };
  return current.keys;
}

/** The statistics answers the web caches (the `answer` of statsAnswer). */
export const statsAnswers = {
  policy: (policyId: string) => `policy:{${policyId}}`,
  overall: (window: string, top: number) => `all:${window}:${top}`,
  user: (userId: string) => `user:{${userId}}`,
};

/**
 * The rate limiters' key prefixes under `namespace` (rateLimitNamespace(), or a test's own):
 * rate-limiter-flexible keys a count `<keyPrefix>:<address or user id>`.
 */
export function rateLimitKeyPrefixes(namespace: string) {
  return {
    /** Requests per client address (an IPv6 /64 as one). */
    address: `${namespace}:ip`,
    /** Requests per authenticated user. */
    user: `${namespace}:user`,
    /** Wrong coupon codes per user. */
    codeUser: `${namespace}:code-user`,
    /** Wrong coupon codes per client address. */
    codeAddress: `${namespace}:code-ip`,
    /** Wrong Bull Board credentials per client address. */
    boardAuth: `${namespace}:board-auth`,
  };
}
