// The HTTP application: middleware, routes and error mapping. server.ts only wires it to a port.
import { Hono } from 'hono';
import type { Redis } from 'ioredis';
import type { Logger } from '../core/logger';
import type { Queues } from '../queues/connection';
import type { AppEnv } from './context';
import { authenticate } from './middleware/auth';
import { limitBody } from './middleware/body-limit';
import { notFound, onError } from './middleware/errors';
import { trace } from './middleware/trace';
import { checkoutRoutes } from './routes/checkout';
import { healthRoutes } from './routes/health';
import { issueRoutes } from './routes/issue';
import { jobRoutes } from './routes/jobs';
import { policyRoutes } from './routes/policies';
import { userRoutes } from './routes/users';

export interface AppDeps {
  queues: Queues;
  redis: Redis;
  log: Logger;
  jwtSecret: string;
  isDraining?: () => boolean;
}

const MAX_BODY_BYTES = 64 * 1024;

export function createApp(deps: AppDeps) {
  const app = new Hono<AppEnv>();
  app.onError(onError);
  app.notFound(notFound);

  app.route('/health', healthRoutes(deps.queues, deps.isDraining ?? (() => false)));

  const api = new Hono<AppEnv>();
  api.use('*', trace(deps.log));
  api.use('*', limitBody(MAX_BODY_BYTES));
  api.use('*', authenticate(deps.jwtSecret));
  api.route('/coupons/policies', policyRoutes(deps.redis));
  api.route('/coupons/issue', issueRoutes(deps.queues));
  api.route('/coupons/users', userRoutes());
  api.route('/coupons', checkoutRoutes(deps.queues));
  api.route('/jobs', jobRoutes(deps.queues));
  app.route('/api/v1', api);

  return app;
}
