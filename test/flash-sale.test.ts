// First-come-first-served issuance over HTTP against the real processes, Postgres and Redis.
import { Api, mapLimit } from './support/http';
import { closeDb, couponsOf } from './support/db';
import { policyBody, uniqueId } from './support/fixtures';
import { startStack, type Stack } from './support/stack';
import { adminToken, tokenFor } from './support/tokens';

let stack: Stack;
let api: Api;
let admin: string;

beforeAll(async () => {
  stack = await startStack({ workers: 2, name: 'flash-sale' });
  api = new Api(stack.baseUrl, 256);
  admin = await adminToken();
});

afterAll(async () => {
  await api?.close();
  await stack?.stop();
  await closeDb();
});

async function createPolicy(overrides: Record<string, unknown> = {}) {
  const reply = await api.post('/api/v1/coupons/policies', admin, policyBody(overrides));
  expect(reply.status).toBe(201);
  return reply.body as { id: string };
}

/** Every user asks `times` times, all at once; returns each request's settled job. */
async function rush(policyId: string, users: string[], times: number) {
  const tokens = new Map(await Promise.all(users.map(async (u) => [u, await tokenFor(u)] as const)));
  const requests = users.flatMap((u) => Array.from({ length: times }, () => u));
  const accepted = await Promise.all(
    requests.map(async (user) => {
      const reply = await api.post('/api/v1/coupons/issue', tokens.get(user), { policyId });
      return { user, reply };
    }),
  );
  for (const { reply } of accepted) expect(reply.status).toBe(202);
  return mapLimit(accepted, 128, async ({ user, reply }) => ({
    user,
    job: await api.settle(reply.body.jobId, tokens.get(user) as string),
  }));
}

describe('first-come-first-served issuance', () => {
  it('issues exactly the stock when 1,000 users race twice each for 100 coupons', async () => {
    const policy = await createPolicy({ totalQuantity: 100 });
    const users = Array.from({ length: 1000 }, (_, i) => uniqueId(`fc${i}`));
    const results = await rush(policy.id, users, 2);

    expect(results).toHaveLength(2000);
    const statuses = results.map((r) => r.job.status);
    expect(statuses.filter((s) => s === 'pending' || s === 'failed')).toEqual([]);
    const winners = results.filter((r) => r.job.status === 'succeeded');
    expect(winners).toHaveLength(100);
    expect(new Set(winners.map((w) => w.user)).size).toBe(100);
    for (const r of results.filter((x) => x.job.status === 'rejected')) {
      expect(['SOLD_OUT', 'USER_LIMIT_REACHED']).toContain(r.job.reason.code);
    }

    const rows = await couponsOf(policy.id);
    expect(rows).toHaveLength(100);
    expect(new Set(rows.map((r) => r.user_id)).size).toBe(100);
    expect(rows.map((r) => r.slot)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(new Set(winners.map((w) => w.job.result.id))).toEqual(new Set(rows.map((r) => r.id)));

    const view = await api.get(`/api/v1/coupons/policies/${policy.id}`, admin);
    expect(view.body.issuedCount).toBe(100);
  });

  it('lets a user hold up to the per-user limit of 3 and no more', async () => {
    const policy = await createPolicy({ totalQuantity: 50, perUserLimit: 3 });
    const users = Array.from({ length: 10 }, (_, i) => uniqueId(`lim${i}`));
    const results = await rush(policy.id, users, 5);

    const rows = await couponsOf(policy.id);
    expect(rows).toHaveLength(30);
    const perUser = new Map<string, number>();
    for (const row of rows) perUser.set(row.user_id, (perUser.get(row.user_id) ?? 0) + 1);
    expect([...perUser.values()]).toEqual(Array(10).fill(3));
    const refused = results.filter((r) => r.job.status === 'rejected').map((r) => r.job.reason.code);
    expect(refused).toEqual(Array(20).fill('USER_LIMIT_REACHED'));

    const user = users[0] as string;
    const list = await api.get(`/api/v1/coupons/users/${user}?status=AVAILABLE&limit=2`, await tokenFor(user));
    expect(list.status).toBe(200);
    expect(list.body.data).toHaveLength(2);
    const rest = await api.get(
      `/api/v1/coupons/users/${user}?status=AVAILABLE&limit=2&cursor=${list.body.nextCursor}`,
      await tokenFor(user),
    );
    expect(rest.body.data).toHaveLength(1);
    expect(rest.body.nextCursor).toBeNull();
    const ids = [...list.body.data, ...rest.body.data].map((c: { id: string }) => c.id);
    expect(new Set(ids)).toEqual(new Set(rows.filter((r) => r.user_id === user).map((r) => r.id)));
  });

  it('refuses outside the issue window, before and after', async () => {
    const early = await createPolicy({ issueWindow: { startsAt: new Date(Date.now() + 3_600_000).toISOString() } });
    const late = await createPolicy({
      issueWindow: { startsAt: new Date(Date.now() - 7_200_000).toISOString(), endsAt: new Date(Date.now() - 3_600_000).toISOString() },
    });
    for (const policy of [early, late]) {
      const [result] = await rush(policy.id, [uniqueId('win')], 1);
      expect(result?.job.status).toBe('rejected');
      expect(result?.job.reason.code).toBe('OUTSIDE_ISSUE_WINDOW');
      expect(await couponsOf(policy.id)).toHaveLength(0);
    }
  });

  it('stops issuing as soon as a policy is paused, and resumes after', async () => {
    const policy = await createPolicy({ totalQuantity: 10 });
    const [first] = await rush(policy.id, [uniqueId('p')], 1);
    expect(first?.job.status).toBe('succeeded');

    expect((await api.patch(`/api/v1/coupons/policies/${policy.id}`, admin, { status: 'PAUSED' })).status).toBe(200);
    const paused = await rush(policy.id, [uniqueId('p'), uniqueId('p')], 1);
    expect(paused.map((r) => r.job.reason?.code)).toEqual(['POLICY_NOT_ACTIVE', 'POLICY_NOT_ACTIVE']);

    expect((await api.patch(`/api/v1/coupons/policies/${policy.id}`, admin, { status: 'ACTIVE' })).status).toBe(200);
    const [resumed] = await rush(policy.id, [uniqueId('p')], 1);
    expect(resumed?.job.status).toBe('succeeded');
    expect(await couponsOf(policy.id)).toHaveLength(2);
  });

  it('rejects a policy that does not exist, and a CODE policy asked for by id', async () => {
    const [missing] = await rush('no-such-policy', [uniqueId('m')], 1);
    expect(missing?.job.reason.code).toBe('POLICY_NOT_FOUND');
    const codePolicy = await createPolicy({ issueMethod: 'CODE', code: uniqueId('CODE').toUpperCase() });
    const [wrongWay] = await rush(codePolicy.id, [uniqueId('m')], 1);
    expect(wrongWay?.job.reason.code).toBe('METHOD_NOT_SUPPORTED');
  });

  it('issues more once the quantity is raised after a sell-out', async () => {
    const policy = await createPolicy({ totalQuantity: 3 });
    const first = await rush(
      policy.id,
      Array.from({ length: 5 }, () => uniqueId('q')),
      1,
    );
    expect(first.filter((r) => r.job.status === 'succeeded')).toHaveLength(3);
    expect((await api.patch(`/api/v1/coupons/policies/${policy.id}`, admin, { totalQuantity: 5 })).status).toBe(200);
    const second = await rush(
      policy.id,
      Array.from({ length: 5 }, () => uniqueId('q')),
      1,
    );
    expect(second.filter((r) => r.job.status === 'succeeded')).toHaveLength(2);
    expect((await couponsOf(policy.id)).map((r) => r.slot)).toEqual([1, 2, 3, 4, 5]);
  });
});
