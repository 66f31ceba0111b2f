// The policy lifecycle and the error contract of the HTTP API, in-process over real Postgres and Redis.
import { policyBody, uniqueId } from './support/fixtures';
import { startTestApp, type TestApp } from './support/app';
import { adminToken, tokenFor } from './support/tokens';

let t: TestApp;
let admin: string;
let user: string;

beforeAll(async () => {
  t = await startTestApp();
  admin = await adminToken();
  user = await tokenFor(uniqueId('shopper'));
});

afterAll(async () => {
  await t?.close();
});

const create = async (overrides: Record<string, unknown> = {}) => {
  const reply = await t.call('POST', '/api/v1/coupons/policies', { token: admin, body: policyBody(overrides) });
  expect(reply.status).toBe(201);
  return reply.body;
};

describe('policy lifecycle', () => {
  it('creates a policy and reads it back with its counts', async () => {
    const body = policyBody({ discount: { type: 'PERCENTAGE', value: 15, maxDiscountAmount: 5000 }, perUserLimit: 2 });
    const created = await t.call('POST', '/api/v1/coupons/policies', { token: admin, body });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({
      name: body.name,
      discount: { type: 'PERCENTAGE', value: 15, maxDiscountAmount: 5000 },
      issueMethod: 'FIRST_COME',
      totalQuantity: 100,
      perUserLimit: 2,
      status: 'ACTIVE',
      issuedCount: 0,
      usedCount: 0,
    });
    const read = await t.call('GET', `/api/v1/coupons/policies/${created.body.id}`, { token: admin });
    expect(read.status).toBe(200);
    expect(read.body).toEqual(created.body);
  });

  it('pauses, resumes, extends, raises and ends a policy, and keeps an ENDED one ended', async () => {
    const policy = await create({ issueWindow: { startsAt: '2026-01-01T00:00:00Z', endsAt: '2027-01-01T00:00:00Z' } });
    const path = `/api/v1/coupons/policies/${policy.id}`;
    expect((await t.call('PATCH', path, { token: admin, body: { status: 'PAUSED' } })).body.status).toBe('PAUSED');
    expect((await t.call('PATCH', path, { token: admin, body: { status: 'ACTIVE' } })).body.status).toBe('ACTIVE');
    const extended = await t.call('PATCH', path, { token: admin, body: { issueWindow: { endsAt: '2027-06-01T00:00:00Z' } } });
    expect(extended.body.issueWindow.endsAt).toBe('2027-06-01T00:00:00.000Z');
    expect((await t.call('PATCH', path, { token: admin, body: { totalQuantity: 500 } })).body.totalQuantity).toBe(500);

    const lowered = await t.call('PATCH', path, { token: admin, body: { totalQuantity: 10 } });
    expect(lowered.status).toBe(400);
    expect(lowered.body.error.code).toBe('VALIDATION_FAILED');
    const shortened = await t.call('PATCH', path, { token: admin, body: { issueWindow: { endsAt: '2026-06-01T00:00:00Z' } } });
    expect(shortened.status).toBe(400);

    expect((await t.call('PATCH', path, { token: admin, body: { status: 'ENDED' } })).body.status).toBe('ENDED');
    const reopened = await t.call('PATCH', path, { token: admin, body: { status: 'ACTIVE' } });
    expect(reopened.status).toBe(409);
    expect(reopened.body.error.code).toBe('CONFLICT');
  });

  it('shows users only ACTIVE policies, and admins every status with paging', async () => {
    const active = await create();
    const paused = await create({ status: 'PAUSED' });
    expect((await t.call('GET', `/api/v1/coupons/policies/${paused.id}`, { token: user })).status).toBe(404);
    expect((await t.call('GET', `/api/v1/coupons/policies/${active.id}`, { token: user })).status).toBe(200);

    const userList = await t.call('GET', '/api/v1/coupons/policies?limit=100', { token: user });
    expect(userList.body.data.every((p: { status: string }) => p.status === 'ACTIVE')).toBe(true);

    const newer = await create({ status: 'PAUSED' });
    const firstPage = await t.call('GET', '/api/v1/coupons/policies?status=PAUSED&limit=1', { token: admin });
    expect(firstPage.body.data.map((p: { id: string }) => p.id)).toEqual([newer.id]); // newest first
    expect(typeof firstPage.body.nextCursor).toBe('string');
    const next = await t.call('GET', `/api/v1/coupons/policies?status=PAUSED&limit=1&cursor=${firstPage.body.nextCursor}`, {
      token: admin,
    });
    expect(next.status).toBe(200);
    expect(next.body.data.map((p: { id: string }) => p.id)).toEqual([paused.id]);
  });

  it('refuses a second policy with the same shared code, whatever its case', async () => {
    const code = uniqueId('WELCOME').replace(/-/g, '');
    await create({ issueMethod: 'CODE', code });
    const again = await t.call('POST', '/api/v1/coupons/policies', {
      token: admin,
      body: policyBody({ issueMethod: 'CODE', code: code.toLowerCase() }),
    });
    expect(again.status).toBe(409);
  });
});

describe('error contract', () => {
  it('answers a validation failure with 400, the code and the failing fields', async () => {
    const reply = await t.call('POST', '/api/v1/coupons/policies', {
      token: admin,
      body: policyBody({ totalQuantity: -1, discount: { type: 'PERCENTAGE', value: 150 } }),
    });
    expect(reply.status).toBe(400);
    expect(reply.body.error.code).toBe('VALIDATION_FAILED');
    const paths = reply.body.error.details.map((d: { path: string }) => d.path);
    expect(paths).toEqual(expect.arrayContaining(['totalQuantity', 'discount.value']));
  });

  it('answers malformed JSON with 400, a non-JSON body with 415 and a huge body with 413', async () => {
    const malformed = await t.call('POST', '/api/v1/coupons/policies', {
      token: admin,
      rawBody: '{"name":',
      headers: { 'content-type': 'application/json' },
    });
    expect(malformed.status).toBe(400);
    expect(malformed.body.error.code).toBe('VALIDATION_FAILED');
    const text = await t.call('POST', '/api/v1/coupons/policies', {
      token: admin,
      rawBody: 'name=x',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    expect(text.status).toBe(415);
    const huge = await t.call('POST', '/api/v1/coupons/policies', {
      token: admin,
      rawBody: JSON.stringify({ name: 'x'.repeat(200_000) }),
      headers: { 'content-type': 'application/json', 'content-length': '200013' },
    });
    expect(huge.status).toBe(413);
    expect(huge.body.error.code).toBe('PAYLOAD_TOO_LARGE');
  });

  it('answers unknown policies and routes with 404 and never leaks internals', async () => {
    const missing = await t.call('GET', '/api/v1/coupons/policies/does-not-exist', { token: admin });
    expect(missing.status).toBe(404);
    expect(missing.body.error.code).toBe('NOT_FOUND');
    const route = await t.call('GET', '/api/v1/nothing-here', { token: admin });
    expect(route.status).toBe(404);
    const weird = await t.call('GET', `/api/v1/coupons/policies/${'%27%3B--'.repeat(3)}`, { token: admin });
    expect(weird.status).toBe(404);
    expect(JSON.stringify(weird.body)).not.toMatch(/SELECT|sequelize|at \w+ \(/i);
  });

  it('refuses bad query parameters with 400', async () => {
    expect((await t.call('GET', '/api/v1/coupons/policies?limit=0', { token: admin })).status).toBe(400);
    expect((await t.call('GET', '/api/v1/coupons/policies?cursor=garbage', { token: admin })).status).toBe(400);
    expect((await t.call('GET', '/api/v1/coupons/policies?status=SOMETIMES', { token: admin })).status).toBe(400);
    expect((await t.call('GET', '/api/v1/coupons/users/a%00b', { token: admin })).status).toBe(400);
    expect((await t.call('GET', `/api/v1/coupons/policies/${'x'.repeat(129)}`, { token: admin })).status).toBe(400);
    expect((await t.call('POST', '/api/v1/coupons/issue', { token: admin, body: { policyId: 'p\u0000' } })).status).toBe(400);
  });
});
