// The Redis keys of one policy's admission state. The {policyId} hash tag keeps them in one
// Redis Cluster slot, so the Lua scripts may touch them together.

export const ADMISSION_PREFIX = 'coupon:adm';

export function policyKeys(policyId: string) {
  const base = `${ADMISSION_PREFIX}:{${policyId}}`;
  return {
    meta: `${base}:meta`,
    stock: `${base}:stock`,
    free: `${base}:free`,
    users: `${base}:users`,
    pending: `${base}:pending`,
  };
}

/** The set of policies that have admission state, walked by the reconciler. */
export const TRACKED_POLICIES_KEY = `${ADMISSION_PREFIX}:policies`;
