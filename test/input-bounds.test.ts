// Every date and number is bounded at the edge (src/core/bounds.ts): out-of-range input is a 400 naming the
// field, never a query that Postgres fails with a 500. test/fuzz.test.ts looks for more of these.
import { startTestApp, type TestApp } from './support/app';
import { policyBody, uniqueId } from './support/fixtures';
import { adminToken, tokenFor } from './support/tokens';

let t: TestApp;

beforeAll(async () => {
  t = await startTestApp();
});

afterAll(async () => {
  await t?.close();
});

const cursorOf = (at: string, id: string) => Buffer.from(JSON.stringify([at, id])).toString('base64url');

describe('input bounds', () => {
  it('answers 400 for a cursor dated outside 2000..2099 or naming an impossible id, on both paged lists', async () => {
    const user = uniqueId('bounds');
    const token = await tokenFor(user);
    const admin = await adminToken();
    const bad = [
      cursorOf('0000-01-01T00:00:00Z', 'x'),
      cursorOf('+275760-09-13T00:00:00Z', 'x'),
      cursorOf('1999-12-31T23:59:59Z', 'x'),
      cursorOf('2026-01-01T00:00:00Z', 'a\u0000b'),
      cursorOf('2026-01-01T00:00:00Z', 'x'.repeat(129)),
      'not*base64',
    ];
    for (const cursor of bad) {
      for (const [path, who] of [
        [`/api/v1/coupons/users/${user}`, token],
        ['/api/v1/coupons/policies', admin],
      ] as const) {
        const reply = await t.call('GET', `${path}?cursor=${encodeURIComponent(cursor)}`, { token: who });
        expect({ cursor, path, status: reply.status, code: reply.body?.error?.code }).toEqual({
          cursor,
          path,
          status: 400,
          code: 'VALIDATION_FAILED',
        });
      }
    }
    // A cursor within the bounds still pages.
    const ok = await t.call('GET', `/api/v1/coupons/users/${user}?cursor=${cursorOf('2026-01-01T00:00:00Z', 'x')}`, { token });
    expect(ok.status).toBe(200);
  });

  it('answers 400 for a policy whose dates are outside 2000..2099, created or patched', async () => {
    const admin = await adminToken();
    for (const at of ['0000-01-01T00:00:00Z', '1999-12-31T23:59:59Z', '2100-01-01T00:00:00Z', '9999-12-31T23:59:59Z']) {
      const created = await t.call('POST', '/api/v1/coupons/policies', {
        token: admin,
        body: policyBody({ issueWindow: { startsAt: at } }),
      });
      expect({ at, status: created.status, path: created.body.error?.details?.[0]?.path }).toEqual({
        at,
        status: 400,
        path: 'issueWindow.startsAt',
      });
      const until = await t.call('POST', '/api/v1/coupons/policies', { token: admin, body: policyBody({ validity: { until: at } }) });
      expect({ at, status: until.status }).toEqual({ at, status: 400 });
    }
    const policy = await t.call('POST', '/api/v1/coupons/policies', { token: admin, body: policyBody() });
    expect(policy.status).toBe(201);
    const patched = await t.call('PATCH', `/api/v1/coupons/policies/${policy.body.id}`, {
      token: admin,
      body: { issueWindow: { endsAt: '0000-01-01T00:00:00Z' } },
    });
    expect(patched.status).toBe(400);
  });
});
