// The Redis keys of one policy's admission state. The {policyId} hash tag keeps them in one
// Redis Cluster slot, so the Lua scripts may touch them together. Keys live under the deployment's
// QUEUE_PREFIX, so two deployments sharing a Redis never see each other's state.
import { config } from '../../core/config';

const namespace = () => `${config().QUEUE_PREFIX}:adm`;

export function policyKeys(policyId: string) {
  const base = `${namespace()}:{${policyId}}`;
  return {
    meta: `${base}:meta`,
    stock: `${base}:stock`,
    free: `${base}:free`,
    users: `${base}:users`,
    pending: `${base}:pending`,
  };
}

/** The set of policies that have admission state, walked by the reconciler. */
export const trackedPoliciesKey = () => `${namespace()}:policies`;

/** Lock names: one rebuild per policy, one reconciler per deployment. */
export const rebuildLockKey = (policyId: string) => `${namespace()}:lock:rebuild:{${policyId}}`;
export const reconcileLockKey = () => `${namespace()}:lock:reconcile`;
