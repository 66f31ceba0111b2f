// Signs bearer tokens for tests, including the broken ones the API must refuse.
import { createSecretKey } from 'node:crypto';
import { SignJWT } from 'jose';

export function testSecret(): string {
  const secret = process.env.JWT_SECRET;
  if (!secret) throw new Error('JWT_SECRET is not set: the jest global setup sets it');
  return secret;
}

export async function tokenFor(
  sub: string,
  role: 'user' | 'admin' = 'user',
  opts: { secret?: string; expiresIn?: number; omitExp?: boolean; extra?: Record<string, unknown> } = {},
): Promise<string> {
  const jwt = new SignJWT({ role, ...opts.extra }).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setSubject(sub).setIssuedAt();
  if (!opts.omitExp) jwt.setExpirationTime(Math.floor(Date.now() / 1000) + (opts.expiresIn ?? 3600));
  return jwt.sign(createSecretKey(Buffer.from(opts.secret ?? testSecret(), 'utf8')));
}

export const adminToken = () => tokenFor('admin-1', 'admin');
