import { Hono } from 'hono';
import { ConnectionAcquireTimeoutError, ConnectionRefusedError, DatabaseError, TimeoutError } from 'sequelize';
import { AppError } from '../../core/errors';
import type { AppEnv } from '../context';
import { onError } from './errors';

function appThrowing(error: unknown) {
  const app = new Hono<AppEnv>();
  app.onError(onError);
  app.get('/', () => {
    throw error;
  });
  return app;
}

async function answer(error: unknown) {
  const res = await appThrowing(error).request('/');
  return {
    status: res.status,
    retryAfter: res.headers.get('retry-after'),
    body: (await res.json()) as { error: { code: string; message: string } },
  };
}

describe('onError', () => {
  it('answers an AppError with its status and code', async () => {
    expect(await answer(new AppError('FORBIDDEN'))).toMatchObject({ status: 403, body: { error: { code: 'FORBIDDEN' } } });
  });

  it('answers 503 UNAVAILABLE with Retry-After when Postgres or Redis is away or saturated', async () => {
    const outages = [
      new ConnectionAcquireTimeoutError(new Error('pool exhausted')),
      new ConnectionRefusedError(new Error('ECONNREFUSED')),
      new TimeoutError(Object.assign(new Error('canceling statement due to statement timeout'), { sql: 'SELECT pg_sleep(20)' })),
      new DatabaseError(Object.assign(new Error('canceling statement due to statement timeout'), { code: '57014', sql: 'SELECT 1' })),
      new DatabaseError(
        Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01', sql: 'SELECT 1' }),
      ),
      new DatabaseError(Object.assign(new Error('Connection terminated unexpectedly'), { sql: 'SELECT 1' })),
      new Error("Stream isn't writeable and enableOfflineQueue options is false"),
      new Error('Connection is closed.'),
    ];
    for (const error of outages) {
      expect(await answer(error)).toMatchObject({ status: 503, retryAfter: '1', body: { error: { code: 'UNAVAILABLE' } } });
    }
  });

  it('answers a query error of its own 500, not 503', async () => {
    const reply = await answer(new DatabaseError(Object.assign(new Error('syntax error'), { code: '42601', sql: 'SELEC 1' })));
    expect(reply.status).toBe(500);
  });

  it('answers anything else 500 INTERNAL without its message', async () => {
    const reply = await answer(new Error('relation "secret_table" does not exist'));
    expect(reply.status).toBe(500);
    expect(reply.body.error.code).toBe('INTERNAL');
    expect(JSON.stringify(reply.body)).not.toContain('secret_table');
  });
});
