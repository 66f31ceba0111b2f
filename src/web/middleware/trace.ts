// Gives each request a trace id (the caller's X-Request-Id when it is sane) and logs its outcome in
// one line: method, path, status, duration and whatever the handler added with logWith (the job it
// queued and what that job is about). One line a request, rather than one per step, is what a
// request costs in log volume and CPU at thousands of requests a second.
import type { Context, MiddlewareHandler } from 'hono';
import type { Logger } from '../../core/logger';
import { traceIdFrom } from '../../core/trace';
import type { AppEnv } from '../context';

export function trace(log: Logger): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const traceId = traceIdFrom(c.req.header('x-request-id'));
    const reqLog = log.child({ traceId });
    c.set('traceId', traceId);
    c.set('log', reqLog);
    // Set before the handler builds its response: a header added to a finished response makes
    // @hono/node-server materialise a full Web Response, which costs a tenth of a request's CPU.
    c.header('X-Request-Id', traceId);
    const started = performance.now();
    await next();
    const status = c.res.status;
    // The handler's fields first: none of them can stand in for the request's own.
    const line = {
      ...c.get('logFields'),
      method: c.req.method,
      path: c.req.path,
      status,
      ms: Math.round((performance.now() - started) * 10) / 10,
    };
    if (status >= 500) reqLog.error(line, 'request failed');
    else reqLog.info(line, 'request');
  };
}

/**
 * Adds fields to the request's log line, e.g. `{ enqueued: 'reserve', jobId }` once its job is in
 * Redis. Later fields of the same name win.
 */
export function logWith(c: Context<AppEnv>, fields: Record<string, unknown>): void {
  c.set('logFields', { ...c.get('logFields'), ...fields });
}
