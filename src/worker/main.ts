// The worker process: consumes the job queues (./consumers.ts), runs the timers every worker runs
// (./schedules.ts: reservation timeouts, admission reconciler, inbox sweep), drains on SIGTERM.
import { initAlertSeries } from '../core/alerts';
import { config, opsPortOf, requireCodeSecret } from '../core/config';
import { createLocks } from '../core/lock';
import { logger } from '../core/logger';
import { exposeMetrics, trackQueueDepth } from '../core/metrics';
import { readiness, startOpsServer, type Phase } from '../core/ops-server';
import { closeSequelize, sequelize } from '../core/postgres';
import { createRedis } from '../core/redis';
import { createQueues } from '../queues/connection';
import { QUEUES } from '../queues/names';
import { watchJobFailures } from '../observability/job-metrics';
import { initModels } from '../storage';
import { warmPolicyMeta } from '../storage/admission/admission';
import { startPolicyCache } from '../storage/cache/policy-cache';
import { initUserCouponCache } from '../storage/cache/user-coupon-cache';
import { startConsumers } from './consumers';
import { startSchedules } from './schedules';

async function main(): Promise<void> {
  const cfg = config();
  const log = logger().child({ process: 'worker' });
  const db = initModels(sequelize());
  await db.authenticate();

  const redis = createRedis('client');
  exposeMetrics('worker');
  initAlertSeries(['POLICY_SOLD_OUT', 'POLICY_90_PERCENT', 'JOB_FAILURES', 'PAYMENT_CONFLICT']);
  // Ready: Postgres and Redis answer, and the worker takes jobs (not starting, not draining).
  let phase: Phase = 'starting';
  const ops = await startOpsServer({
    port: opsPortOf(cfg, 'WORKER_OPS_PORT'),
    log,
    ready: () => readiness({ postgres: () => sequelize().query('SELECT 1'), redis: () => redis.ping() }, () => phase),
  });
  // Every coupon change drops its user's cached list (the web serves them).
  initUserCouponCache(redis);
  const locks = createLocks(redis);
  const queues = createQueues();
  // Policy lookups of the issue path: the admission state in Redis and this process's cache of
  // codes and event triggers, both filled with the ACTIVE policies before the first job.
  const stopPolicyCache = await startPolicyCache(log);
  log.info({ policies: await warmPolicyMeta(redis) }, 'admission state warmed with the ACTIVE policies');

  const consumers = startConsumers({ db, redis, locks, codeSecret: requireCodeSecret(), log });
  watchJobFailures(log, cfg.ALERT_JOB_FAILURES_THRESHOLD, cfg.ALERT_JOB_FAILURES_WINDOW_MS);
  trackQueueDepth(Object.values(QUEUES).map((name) => queues.get(name)));
  const stopSchedules = startSchedules({ db, redis, locks, queues, log });

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    phase = 'draining';
    log.info({ signal }, 'worker draining: finishing in-flight jobs');
    await Promise.all([consumers.close(), stopSchedules()]);
    await queues.close();
    await stopPolicyCache();
    redis.disconnect();
    await closeSequelize();
    await ops.close();
    log.info('worker stopped');
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  phase = 'running';
  // Say "started" only once a signal can no longer kill the process without its drain.
  log.info({ concurrency: cfg.WORKER_CONCURRENCY, queues: consumers.workers.map((w) => w.name) }, 'worker started');
}

main().catch((error: unknown) => {
  logger().fatal({ err: error }, 'worker failed to start');
  process.exit(1);
});
