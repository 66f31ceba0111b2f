// The HTTP application: middleware, routes and error mapping. server.ts only wires it to a port.
import { Hono } from 'hono';
import type { Redis } from 'ioredis';
import { config, requireCodeSecret } from '../core/config';
import type { Logger } from '../core/logger';
import { exposeMetrics, metricsContentType, metricsText } from '../core/metrics';
import { redisKeys } from '../core/redis-keys';
import type { Queues } from '../queues/connection';
import { createRejectionCounter } from '../observability/rejection-stats';
import { BULL_BOARD_PATH, bullBoardRoutes, type BullBoardCredentials } from './bull-board';
import type { AppEnv } from './context';
import { createOutcomeHub, lazyOutcomeHub, type OutcomeHub } from './outcome-hub';
import { authenticate } from './middleware/auth';
import { limitBody } from './middleware/body-limit';
import { recordHttpMetrics } from './middleware/metrics';
import { securityHeaders } from './middleware/security-headers';
import { notFound, onError } from './middleware/errors';
import { createCodeGuard, limitByAddress, limitByUser, type Budget, type CodeGuard } from './middleware/rate-limit';
import { trace } from './middleware/trace';
import { checkoutRoutes } from './routes/checkout';
import { docsRoutes } from './routes/docs';
import { healthRoutes } from './routes/health';
import { issueRoutes } from './routes/issue';
import { jobRoutes } from './routes/jobs';
import { policyRoutes } from './routes/policies';
import { statsRoutes } from './routes/stats';
import { userRoutes } from './routes/users';

export interface AppDeps {
  queues: Queues;
  redis: Redis;
  log: Logger;
  jwtSecret: string;
  /** Key of the coupon-code hashes; CODE_HMAC_SECRET when not given. */
  codeSecret?: string;
  isDraining?: () => boolean;
  /** Issuer, audience and JWKS other than JWT_ISSUER, JWT_AUDIENCE, JWT_JWKS_URL (tests). */
  jwt?: { issuer?: string; audience?: string; jwksUrl?: string };
  /** Mounts Bull Board at /admin/queues behind these Basic credentials; without them it is not mounted. */
  bullBoard?: BullBoardCredentials;
  /** The subscription to the workers' issue outcomes; created with the app when not given. */
  outcomes?: OutcomeHub;
  /**
   * The ops surface (/metrics, /health/ready, Bull Board) is served by createOpsApp on a port of its
   * own (OPS_PORT): this app then serves the API, /docs and /health/live only.
   */
  separateOps?: boolean;
  /** Bull Board's lockout other than the configured one (tests): wrong credentials per window, block. */
  boardLockout?: { failures?: number; windowS?: number; blockS?: number };
  /** Rate limits other than the configured ones (tests): budgets, Redis key prefix, code guard. */
  rateLimits?: { address?: Budget; user?: Budget; trustProxy?: boolean; prefix?: string; codeGuard?: CodeGuard };
}

const MAX_BODY_BYTES = 64 * 1024;

/** Metrics, readiness and Bull Board: outside /api/v1, so no token and no API rate limit. */
function mountOps(app: Hono<AppEnv>, deps: AppDeps): void {
  app.get('/metrics', async (c) => c.body(await metricsText(), 200, { 'content-type': metricsContentType }));
  app.route('/health', healthRoutes(deps.queues, deps.isDraining ?? (() => false)));
  if (!deps.bullBoard) return;
  const cfg = config();
  const lockout = {
    redis: deps.redis,
    failures: deps.boardLockout?.failures ?? cfg.BULL_BOARD_AUTH_FAILURES,
    windowS: deps.boardLockout?.windowS ?? cfg.BULL_BOARD_AUTH_WINDOW_S,
    blockS: deps.boardLockout?.blockS ?? cfg.BULL_BOARD_LOCKOUT_S,
    trustProxy: deps.rateLimits?.trustProxy ?? cfg.TRUST_PROXY,
    prefix: deps.rateLimits?.prefix ?? redisKeys().rateLimitNamespace(),
  };
  app.route(BULL_BOARD_PATH, bullBoardRoutes(deps.queues, deps.bullBoard, lockout));
}

function baseApp(): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.onError(onError);
  app.notFound(notFound);
  app.use('*', securityHeaders());
  return app;
}

/** The ops surface alone, for its own port (OPS_PORT): /metrics, /health/live, /health/ready, Bull Board. */
export function createOpsApp(deps: AppDeps) {
  const app = baseApp();
  mountOps(app, deps);
  return app;
}

export function createApp(deps: AppDeps) {
  const app = baseApp();
  exposeMetrics('web');
  app.use('*', recordHttpMetrics());
  if (deps.separateOps) app.route('/health', healthRoutes(deps.queues, deps.isDraining ?? (() => false), { ready: false }));
  else mountOps(app, deps);
  // The API reference: public, outside /api/v1 and its rate limits.
  app.route('/docs', docsRoutes());

  const limits = deps.rateLimits ?? {};
  const redis = deps.redis;
  const codeGuard = limits.codeGuard ?? createCodeGuard({ redis, prefix: limits.prefix });
  const api = new Hono<AppEnv>();
  api.use('*', trace(deps.log));
  // Per address before authentication, so a flood of bad tokens is limited too; per user after it.
  api.use('*', limitByAddress({ redis, budget: limits.address, trustProxy: limits.trustProxy, prefix: limits.prefix }));
  api.use('*', limitBody(MAX_BODY_BYTES));
  const cfg = config();
  api.use(
    '*',
    authenticate({ secrets: deps.jwtSecret, issuer: cfg.JWT_ISSUER, audience: cfg.JWT_AUDIENCE, jwksUrl: cfg.JWT_JWKS_URL, ...deps.jwt }),
  );
  api.use('*', limitByUser({ redis, budget: limits.user, prefix: limits.prefix }));
  // Stats paths sit under the policy and user prefixes (/coupons/policies/:id/stats, ...): mounted first.
  api.route('/', statsRoutes(deps.redis));
  api.route('/coupons/policies', policyRoutes(deps.redis, deps.queues));
  const outcomes = deps.outcomes ?? lazyOutcomeHub(() => createOutcomeHub(deps.log));
  const rejections = createRejectionCounter(deps.redis, deps.log);
  api.route(
    '/coupons/issue',
    issueRoutes({
      queues: deps.queues,
      codeSecret: deps.codeSecret ?? requireCodeSecret(),
      wrongCodes: codeGuard,
      outcomes,
      rejections,
      log: deps.log,
    }),
  );
  api.route('/coupons/users', userRoutes());
  api.route('/coupons', checkoutRoutes(deps.queues, outcomes));
  api.route('/jobs', jobRoutes(deps.queues, outcomes));
  app.route('/api/v1', api);

  return app;
}
