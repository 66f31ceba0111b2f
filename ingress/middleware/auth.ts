// Bearer JWT (HS256) authentication and the role and ownership rules of the API.
import { createSecretKey } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import { jwtVerify } from 'jose';
import { z } from 'zod';
import { AppError } from '../../core/errors';
import { idSchema } from '../../queues/jobs';
import type { AppEnv, AuthUser } from '../context';

const claimsSchema = z.object({
  sub: idSchema,
  role: z.enum(['user', 'admin']),
  exp: z.number().int(),
});

/** Tokens verified lately: a checkout sends one token with its POST and again with each poll. */
const VERIFIED_CACHE_SIZE = 10_000;

export function authenticate(secret: string): MiddlewareHandler<AppEnv> {
  // One key object for the process: importing the key per request would cost more than the HMAC itself.
  const key = createSecretKey(Buffer.from(secret, 'utf8'));
  // The exact token string, once its signature checked out, maps to its claims; exp is still checked
  // on every use. Oldest entries go first when full.
  const verified = new Map<string, AuthUser & { exp: number }>();
  return async (c, next) => {
    const header = c.req.header('authorization');
    const match = header ? /^Bearer ([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$/.exec(header) : null;
    const token = match?.[1];
    if (!token) throw new AppError('UNAUTHENTICATED');
    let user = verified.get(token);
    if (user && user.exp * 1000 <= Date.now()) {
      verified.delete(token);
      throw new AppError('UNAUTHENTICATED', 'The token is invalid or expired.');
    }
    if (!user) {
      let payload: unknown;
      try {
        // Only HS256 is accepted (so "none" and key-confusion tricks fail), and exp must be present and future.
        ({ payload } = await jwtVerify(token, key, { algorithms: ['HS256'], requiredClaims: ['exp', 'sub'] }));
      } catch {
        throw new AppError('UNAUTHENTICATED', 'The token is invalid or expired.');
      }
      const claims = claimsSchema.safeParse(payload);
      if (!claims.success) throw new AppError('UNAUTHENTICATED', 'The token lacks sub, role or exp.');
      user = { id: claims.data.sub, role: claims.data.role, exp: claims.data.exp };
      if (verified.size >= VERIFIED_CACHE_SIZE) verified.delete(verified.keys().next().value as string);
      verified.set(token, user);
    }
    c.set('user', { id: user.id, role: user.role });
    await next();
  };
}

export const requireAdmin: MiddlewareHandler<AppEnv> = async (c, next) => {
  if (c.get('user').role !== 'admin') throw new AppError('FORBIDDEN', 'This needs the admin role.');
  await next();
};

/** A user acts only on its own things; an admin on anyone's. */
export function assertSelfOrAdmin(user: AuthUser, ownerId: string): void {
  if (user.role !== 'admin' && user.id !== ownerId) throw new AppError('FORBIDDEN');
}
