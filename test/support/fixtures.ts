// Test data: unique ids and policy bodies, so tests can run in parallel against a database with rows.
import { randomUUID } from 'node:crypto';

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
