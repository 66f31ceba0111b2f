// Test data: unique ids and policy bodies, so tests can run in parallel against a database with rows.
import { randomUUID } from 'node:crypto';
import type { Api } from './http';
import { adminToken } from './tokens';

export const uniqueId = (prefix: string) => `${prefix}-${randomUUID().slice(0, 8)}`;

export function policyBody(overrides: Record<string, unknown> = {}) {
  return {
    name: uniqueId('policy'),
    discount: { type: 'FIXED', value: 3000, minOrderAmount: 10000 },
    issueMethod: 'FIRST_COME',
    totalQuantity: 100,
    perUserLimit: 1,
    issueWindow: { startsAt: new Date(Date.now() - 60_000).toISOString() },
    validity: { days: 7 },
    ...overrides,
  };
}

/** Creates a policy through the API as an admin (policyBody with `overrides`); its id. */
export async function createPolicy(api: Api, overrides: Record<string, unknown> = {}): Promise<string> {
  const reply = await api.post('/api/v1/coupons/policies', await adminToken(), policyBody(overrides));
  if (reply.status !== 201) throw new Error(`policy not created: ${reply.status} ${JSON.stringify(reply.body)}`);
  return reply.body.id as string;
}
