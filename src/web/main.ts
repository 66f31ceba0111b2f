// The web process: serves the HTTP API; on SIGTERM turns unready, finishes requests in flight, then exits.
import { serve } from '@hono/node-server';
import { config, requireCodeSecret, requireJwtSecret } from '../core/config';
import { logger } from '../core/logger';
import { closeSequelize, sequelize } from '../core/postgres';
import { createRedis, waitForReady } from '../core/redis';
import { initModels } from '../storage';
import { initUserCouponCache } from '../storage/cache/user-coupon-cache';
import { startPolicyCache } from '../storage/cache/policy-cache';
import { createQueues } from '../queues/connection';
import { createApp, createOpsApp } from './app';
import { createOutcomeHub } from './outcome-hub';
import { BULL_BOARD_PATH } from './bull-board';

/** How long a production web answers 503 on /health/ready after SIGTERM, unless WEB_DRAIN_GRACE_MS says otherwise. */
const PRODUCTION_DRAIN_GRACE_MS = 2_000;

async function main(): Promise<void> {
  const cfg = config();
  const log = logger().child({ process: 'web' });
  initModels(sequelize());
  const queues = createQueues();
  const redis = createRedis('ingress');
  initUserCouponCache(redis);
  // The producer connection has no offline queue: wait for it once, so the first requests don't 503.
  await waitForReady(queues.connection, 15_000);
  const stopPolicyCache = await startPolicyCache(log);
  let draining = false;
  const bullBoard =
    cfg.BULL_BOARD_USER && cfg.BULL_BOARD_PASSWORD ? { username: cfg.BULL_BOARD_USER, password: cfg.BULL_BOARD_PASSWORD } : undefined;
  // Never served without credentials: unset, it is not mounted at all (404).
  if (bullBoard) log.info({ path: BULL_BOARD_PATH }, 'Bull Board on, behind Basic auth');
  else log[cfg.BULL_BOARD_USER || cfg.BULL_BOARD_PASSWORD ? 'warn' : 'info']('Bull Board off: set BULL_BOARD_USER and BULL_BOARD_PASSWORD');
  // The workers' issue outcomes and finished checkout jobs reach this process through one subscription.
  const outcomes = createOutcomeHub(log);
  await outcomes.ready;
  const separateOps = cfg.OPS_PORT !== undefined;
  const deps = {
    queues,
    redis,
    log,
    outcomes,
    jwtSecret: requireJwtSecret(),
    codeSecret: requireCodeSecret(),
    isDraining: () => draining,
    bullBoard,
    separateOps,
  };
  const app = createApp(deps);
  // With OPS_PORT, metrics, readiness and Bull Board answer there only (keep it off the public balancer).
  const opsServer = separateOps
    ? serve({ fetch: createOpsApp(deps).fetch, port: cfg.OPS_PORT, hostname: '0.0.0.0' }, (info) =>
        log.info({ port: info.port }, 'ops server listening'),
      )
    : undefined;
  const server = serve({ fetch: app.fetch, port: cfg.PORT, hostname: '0.0.0.0' }, (info) => {
    log.info({ port: info.port, opsPort: separateOps ? 'separate' : 'same' }, 'web listening');
  });

  const shutdown = (signal: string) => {
    if (draining) return;
    draining = true;
    log.info({ signal }, 'web draining');
    // From now on every answer closes its connection: a client's kept-alive connection cannot keep a
    // web that stopped taking connections answering (and alive); the client reconnects elsewhere.
    // Set before the app's own listener runs, and only now, so it costs the requests of a running web nothing.
    for (const s of [server, opsServer]) s?.prependListener('request', (_req, res) => res.setHeader('Connection', 'close'));
    // Give load balancers a moment to see /health/ready turn 503, then stop accepting.
    const graceMs = cfg.WEB_DRAIN_GRACE_MS ?? (cfg.NODE_ENV === 'production' ? PRODUCTION_DRAIN_GRACE_MS : 100);
    setTimeout(() => {
      opsServer?.close();
      server.close(async () => {
        await outcomes.close();
        await queues.close();
        await stopPolicyCache();
        redis.disconnect();
        await closeSequelize();
        log.info('web stopped');
        process.exit(0);
      });
      (server as unknown as { closeIdleConnections?: () => void }).closeIdleConnections?.();
    }, graceMs);
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

main().catch((error: unknown) => {
  logger().fatal({ err: error }, 'web failed to start');
  process.exit(1);
});
