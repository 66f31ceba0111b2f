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

export function authenticate(secret: string): MiddlewareHandler<AppEnv> {
  // One key object for the process: importing the key per request would cost more than the HMAC itself.
  const key = createSecretKey(Buffer.from(secret, 'utf8'));
  return async (c, next) => {
    const header = c.req.header('authorization');
    const match = header ? /^Bearer ([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$/.exec(header) : null;
    if (!match?.[1]) throw new AppError('UNAUTHENTICATED');
    let payload: unknown;
    try {
      // Only HS256 is accepted (so "none" and key-confusion tricks fail), and exp must be present and future.
      ({ payload } = await jwtVerify(match[1], key, { algorithms: ['HS256'], requiredClaims: ['exp', 'sub'] }));
    } catch {
      throw new AppError('UNAUTHENTICATED', 'The token is invalid or expired.');
    }
    const claims = claimsSchema.safeParse(payload);
    if (!claims.success) throw new AppError('UNAUTHENTICATED', 'The token lacks sub, role or exp.');
    c.set('user', { id: claims.data.sub, role: claims.data.role });
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
