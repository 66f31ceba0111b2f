// Authentication and the per-user access rules, over the in-process app with real Postgres and Redis.
import { policyBody, uniqueId } from './support/fixtures';
import { startTestApp, type TestApp } from './support/app';
import { adminToken, tokenFor } from './support/tokens';

let t: TestApp;

beforeAll(async () => {
  t = await startTestApp();
});

afterAll(async () => {
  await t?.close();
});

describe('authentication', () => {
  const path = '/api/v1/coupons/policies';

  it('refuses a request without a token, or with a malformed header', async () => {
    const attempts: Record<string, string>[] = [{}, { authorization: 'Basic dXNlcjpwYXNz' }, { authorization: 'Bearer not-a-jwt' }];
    for (const headers of attempts) {
      const reply = await t.call('GET', path, { headers });
      expect(reply.status).toBe(401);
      expect(reply.body.error.code).toBe('UNAUTHENTICATED');
    }
  });

  it('refuses a token signed with another secret', async () => {
    const forged = await tokenFor('mallory', 'admin', { secret: 'another-secret-another-secret-another-secret' });
    expect((await t.call('GET', path, { token: forged })).status).toBe(401);
  });

  it('refuses an expired token and one without exp', async () => {
    expect((await t.call('GET', path, { token: await tokenFor('u', 'user', { expiresIn: -10 }) })).status).toBe(401);
    expect((await t.call('GET', path, { token: await tokenFor('u', 'user', { omitExp: true }) })).status).toBe(401);
  });

  it('refuses an unsigned ("alg": "none") token and an unknown role', async () => {
    const header = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
    const payload = Buffer.from(JSON.stringify({ sub: 'mallory', role: 'admin', exp: Math.floor(Date.now() / 1000) + 60 })).toString('base64url');
    expect((await t.call('GET', path, { headers: { authorization: `Bearer ${header}.${payload}.` } })).status).toBe(401);
    const root = await tokenFor('u', 'user', { extra: { role: 'root' } });
    expect((await t.call('GET', path, { token: root })).status).toBe(401);
  });
});

describe('access rules', () => {
  it('keeps policy administration to admins', async () => {
    const user = await tokenFor(uniqueId('u'));
    const reply = await t.call('POST', '/api/v1/coupons/policies', { token: user, body: policyBody() });
    expect(reply.status).toBe(403);
    expect(reply.body.error.code).toBe('FORBIDDEN');
    expect((await t.call('PATCH', '/api/v1/coupons/policies/x', { token: user, body: { status: 'PAUSED' } })).status).toBe(403);
  });

  it("lets a user read only its own coupons; an admin reads anyone's", async () => {
    const alice = uniqueId('alice');
    const bob = uniqueId('bob');
    expect((await t.call('GET', `/api/v1/coupons/users/${alice}`, { token: await tokenFor(alice) })).status).toBe(200);
    const peek = await t.call('GET', `/api/v1/coupons/users/${alice}`, { token: await tokenFor(bob) });
    expect(peek.status).toBe(403);
    expect((await t.call('GET', `/api/v1/coupons/users/${alice}`, { token: await adminToken() })).status).toBe(200);
  });

  it("lets a user read only its own jobs, and not issue to someone else", async () => {
    const alice = uniqueId('alice');
    const bob = uniqueId('bob');
    const accepted = await t.call('POST', '/api/v1/coupons/issue', { token: await tokenFor(alice), body: { policyId: uniqueId('p') } });
    expect(accepted.status).toBe(202);
    expect(accepted.body).toMatchObject({ status: 'pending', statusUrl: `/api/v1/jobs/${accepted.body.jobId}` });
    expect((await t.call('GET', `/api/v1/jobs/${accepted.body.jobId}`, { token: await tokenFor(alice) })).status).toBe(200);
    expect((await t.call('GET', `/api/v1/jobs/${accepted.body.jobId}`, { token: await tokenFor(bob) })).status).toBe(403);
    expect((await t.call('GET', `/api/v1/jobs/${accepted.body.jobId}`, { token: await adminToken() })).status).toBe(200);

    const onBehalf = await t.call('POST', '/api/v1/coupons/issue', { token: await tokenFor(bob), body: { policyId: 'p', userId: alice } });
    expect(onBehalf.status).toBe(403);
    const byAdmin = await t.call('POST', '/api/v1/coupons/issue', { token: await adminToken(), body: { policyId: 'p', userId: alice } });
    expect(byAdmin.status).toBe(202);
  });

  it('answers an unknown or malformed job id with 404 or 400', async () => {
    const token = await tokenFor(uniqueId('u'));
    expect((await t.call('GET', '/api/v1/jobs/iss_00000000-0000-0000-0000-000000000000', { token })).status).toBe(404);
    expect((await t.call('GET', '/api/v1/jobs/..%2F..%2Fetc', { token })).status).toBe(400);
  });
});
