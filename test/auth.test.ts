// Authentication and the per-user access rules, over the in-process app with real Postgres and Redis.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Redis } from 'ioredis';
import { exportJWK, generateKeyPair, SignJWT, type KeyLike } from 'jose';
import { parseConfig } from '../src/core/config';
import { logger } from '../src/core/logger';
import { createRedis } from '../src/core/redis';
import { createApp } from '../src/web/app';
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
    const payload = Buffer.from(JSON.stringify({ sub: 'mallory', role: 'admin', exp: Math.floor(Date.now() / 1000) + 60 })).toString(
      'base64url',
    );
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

  it('lets a user read only its own jobs, and not issue to someone else', async () => {
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

describe('issuer, audience, key rotation and a JWKS', () => {
  const OLD = 'old-key-old-key-old-key-old-key-0123';
  const NEW = 'new-key-new-key-new-key-new-key-0123';
  let jwks: Server;
  let jwksUrl: string;
  let rsa: KeyLike;
  let ec: KeyLike;
  let stranger: KeyLike;
  let redis: Redis;

  beforeAll(async () => {
    const [rsaPair, ecPair, otherPair] = await Promise.all([generateKeyPair('RS256'), generateKeyPair('ES256'), generateKeyPair('RS256')]);
    rsa = rsaPair.privateKey;
    ec = ecPair.privateKey;
    stranger = otherPair.privateKey;
    const keys = [
      { ...(await exportJWK(rsaPair.publicKey)), kid: 'rsa-1', alg: 'RS256' },
      { ...(await exportJWK(ecPair.publicKey)), kid: 'ec-1', alg: 'ES256' },
    ];
    jwks = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys }));
    });
    await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve));
    jwksUrl = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks.json`;
    redis = createRedis('client');
  });

  afterAll(async () => {
    redis?.disconnect();
    await new Promise((resolve) => jwks?.close(resolve));
  });

  const appWith = (jwtSecret: string, jwt: { issuer?: string; audience?: string; jwksUrl?: string } = {}) =>
    createApp({ queues: t.queues, redis, log: logger(), jwtSecret, codeSecret: 'c'.repeat(40), jwt });
  const statusOf = async (app: ReturnType<typeof createApp>, token: string) =>
    (await app.request('/api/v1/coupons/users/alice', { headers: { authorization: `Bearer ${token}` } })).status;
  const signed = (key: KeyLike | Uint8Array, alg: string, claims: Record<string, unknown> = {}, kid?: string) =>
    new SignJWT({ role: 'user', ...claims })
      .setProtectedHeader({ alg, ...(kid && { kid }) })
      .setSubject('alice')
      .setExpirationTime('5m')
      .sign(key);
  const hs = (secret: string, claims: Record<string, unknown> = {}) => signed(new TextEncoder().encode(secret), 'HS256', claims);

  it('verifies with every key of a comma-separated JWT_SECRET, so tokens of the old key work during a rotation', async () => {
    const app = appWith(`${NEW}, ${OLD}`);
    expect(await statusOf(app, await hs(NEW))).toBe(200);
    expect(await statusOf(app, await hs(OLD))).toBe(200);
    expect(await statusOf(app, await hs('another-key-another-key-another-key-0'))).toBe(401);
    expect(await statusOf(appWith(NEW), await hs(OLD))).toBe(401); // the old key removed: its tokens end
    expect(() => parseConfig({ JWT_SECRET: `${NEW},short` })).toThrow(/JWT_SECRET/);
  });

  it('checks iss and aud when JWT_ISSUER and JWT_AUDIENCE are set', async () => {
    const app = appWith(NEW, { issuer: 'https://auth.example', audience: 'coupons' });
    expect(await statusOf(app, await hs(NEW, { iss: 'https://auth.example', aud: 'coupons' }))).toBe(200);
    expect(await statusOf(app, await hs(NEW, { iss: 'https://auth.example', aud: ['other', 'coupons'] }))).toBe(200);
    expect(await statusOf(app, await hs(NEW, { iss: 'https://evil.example', aud: 'coupons' }))).toBe(401);
    expect(await statusOf(app, await hs(NEW, { iss: 'https://auth.example', aud: 'other' }))).toBe(401);
    expect(await statusOf(app, await hs(NEW))).toBe(401);
  });

  it('verifies RS256 and ES256 tokens against JWT_JWKS_URL, and nothing signed by another key', async () => {
    const app = appWith(NEW, { jwksUrl });
    expect(await statusOf(app, await signed(rsa, 'RS256', {}, 'rsa-1'))).toBe(200);
    expect(await statusOf(app, await signed(ec, 'ES256', {}, 'ec-1'))).toBe(200);
    expect(await statusOf(app, await signed(stranger, 'RS256', {}, 'rsa-1'))).toBe(401);
    expect(await statusOf(app, await signed(stranger, 'RS256', {}, 'unknown-kid'))).toBe(401);
    expect(await statusOf(app, await hs(NEW))).toBe(200); // HS256 still verifies with JWT_SECRET
    // Without a JWKS, an RS256 token is refused, whatever it says.
    expect(await statusOf(appWith(NEW), await signed(rsa, 'RS256', {}, 'rsa-1'))).toBe(401);
  });
});
