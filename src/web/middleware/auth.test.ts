// The verified-token cache of authenticate: a cached token still expires, and a full cache starts
// again without refusing anyone.
import { createSecretKey } from 'node:crypto';
import { Hono } from 'hono';
import { SignJWT } from 'jose';
import type { AppEnv } from '../context';
import { onError } from './errors';
import { authenticate } from './auth';

const SECRET = 'auth-cache-test-secret-0123456789-abcdef';
const key = createSecretKey(Buffer.from(SECRET, 'utf8'));

function sign(sub: string, expiresAtS: number): Promise<string> {
  return new SignJWT({ role: 'user' }).setProtectedHeader({ alg: 'HS256' }).setSubject(sub).setExpirationTime(expiresAtS).sign(key);
}

function app() {
  const a = new Hono<AppEnv>();
  a.onError(onError);
  a.use('*', authenticate(SECRET));
  a.get('/me', (c) => c.json(c.get('user')));
  return (token: string) => a.request('/me', { headers: { authorization: `Bearer ${token}` } });
}

describe('authenticate', () => {
  it('refuses a token once it expires, also after it was verified and cached', async () => {
    const call = app();
    const token = await sign('ursula', Math.floor(Date.now() / 1000) + 2);
    const first = await call(token);
    expect(first.status).toBe(200);
    expect(await first.json()).toEqual({ id: 'ursula', role: 'user' });
    expect((await call(token)).status).toBe(200);
    // exp is in whole seconds: past it, whatever the cache holds.
    await new Promise((r) => setTimeout(r, (Math.floor(Date.now() / 1000) + 3) * 1000 - Date.now()));
    const expired = await call(token);
    expect(expired.status).toBe(401);
    expect(((await expired.json()) as { error: { code: string } }).error.code).toBe('UNAUTHENTICATED');
  });

  it('keeps answering every user right when more tokens come than the cache holds (10,000)', async () => {
    const call = app();
    const exp = Math.floor(Date.now() / 1000) + 600;
    const tokens = await Promise.all(Array.from({ length: 10_050 }, (_, i) => sign(`user-${i}`, exp)));
    const ids: string[] = [];
    for (const token of tokens) {
      const reply = await call(token);
      expect(reply.status).toBe(200);
      ids.push(((await reply.json()) as { id: string }).id);
    }
    expect(ids).toEqual(tokens.map((_, i) => `user-${i}`));
    // The first tokens were dropped with the full cache: verified again, still right.
    for (const i of [0, 1, 9_999, 10_049]) {
      const reply = await call(tokens[i]!);
      expect(reply.status).toBe(200);
      expect(((await reply.json()) as { id: string }).id).toBe(`user-${i}`);
    }
    // A forged token is refused whatever the cache holds.
    const forged = `${tokens[5]!.slice(0, -4)}AAAA`;
    expect((await call(forged)).status).toBe(401);
  }, 60_000);
});
