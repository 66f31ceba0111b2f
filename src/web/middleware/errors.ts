// The one place an error becomes an HTTP answer: {"error": {code, message, details?}}; never a stack or SQL.
import type { Context, ErrorHandler, NotFoundHandler } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { ConnectionError, DatabaseError, TimeoutError } from 'sequelize';
import { AppError, errorCatalogue, type ErrorCode } from '../../core/errors';
import { isRedisOutage } from '../../core/redis';
import type { AppEnv } from '../context';
import { RateLimitedError } from './rate-limit';

export function errorBody(code: ErrorCode, message: string, details?: unknown) {
  return { error: { code, message, ...(details !== undefined && { details }) } };
}

function answer(c: Context<AppEnv>, error: AppError) {
  if (error instanceof RateLimitedError) c.header('Retry-After', String(error.retryAfterS));
  else if ((error.code === 'RATE_LIMITED' || error.code === 'UNAVAILABLE') && !c.res.headers.get('Retry-After'))
    c.header('Retry-After', '1');
  return c.json(errorBody(error.code, error.message, error.details), error.status as 400);
}

const HTTP_CODES: Record<number, ErrorCode> = {
  400: 'VALIDATION_FAILED',
  401: 'UNAUTHENTICATED',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  413: 'PAYLOAD_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE',
};

export const onError: ErrorHandler<AppEnv> = (error, c) => {
  if (error instanceof AppError) return answer(c, error);
  if (error instanceof HTTPException && HTTP_CODES[error.status]) {
    const code = HTTP_CODES[error.status] as ErrorCode;
    return answer(c, new AppError(code, error.status === 400 ? 'The request body is not valid JSON.' : undefined));
  }
  const log = c.get('log');
  if (isOutage(error)) {
    // Postgres or Redis is away or saturated (pool exhausted, statement timeout): the client may retry.
    log?.warn({ err: error, path: c.req.path }, 'dependency unavailable');
    c.header('Retry-After', '1');
    return c.json(errorBody('UNAVAILABLE', errorCatalogue.UNAVAILABLE.message), 503);
  }
  log?.error({ err: error, path: c.req.path }, 'unhandled error');
  return c.json(errorBody('INTERNAL', errorCatalogue.INTERNAL.message), 500);
};

/** SQLSTATEs of a server that cancelled or is going away: statement timeout, admin shutdown, crash, starting up, and connection exceptions (08xxx). */
const PG_OUTAGE = /^(57014|57P01|57P02|57P03|08...)$/;

/** A fault of a dependency rather than of this request: Postgres unreachable or its pool exhausted, a statement timed out, Redis away. */
export function isOutage(error: unknown): boolean {
  if (error instanceof ConnectionError || error instanceof TimeoutError) return true;
  if (error instanceof DatabaseError) {
    // Sequelize reports these as a plain DatabaseError; the driver's error says which it was.
    const parent = error.parent as { code?: string; message?: string };
    return PG_OUTAGE.test(parent.code ?? '') || /^Connection terminated/.test(parent.message ?? '');
  }
  // ioredis: not connected, the connection dropped, or no answer within commandTimeout.
  return isRedisOutage(error);
}

export const notFound: NotFoundHandler<AppEnv> = (c) => c.json(errorBody('NOT_FOUND', `No route ${c.req.method} ${c.req.path}.`), 404);
