// The worker process: consumes the job queues, runs the admission reconciler, the reservation
// timeout sweep and the inbox sweep, drains on SIGTERM.
import { Worker } from 'bullmq';
import { initAlertSeries } from '../core/alerts';
import { config, opsPortOf, requireCodeSecret } from '../core/config';
import { logger } from '../core/logger';
import { exposeMetrics, trackQueueDepth } from '../core/metrics';
import { readiness, startOpsServer, type Phase } from '../core/ops-server';
import { closeSequelize, sequelize } from '../core/postgres';
import { createRedis } from '../core/redis';
import { initModels } from '../models';
import { initUserCouponCache } from '../models/user-coupon-cache';
import { startPolicyCache } from '../models/policy-cache';
import { QUEUES } from '../queues/names';
import { createQueues } from '../queues/connection';
import { createLocks } from './lock';
import { cappedBackoff } from './backoff';
import { warmPolicyMeta } from './admission/admission';
import { createCheckoutProcessor } from './checkout';
import { scheduleExpirySweeper } from './expire-reservations';
import { scheduleUnfetchedCodesDrop } from './generate-codes';
import { scheduleInboxSweep } from './inbox-sweep';
import { failedForGood, instrumentWorker, watchJobFailures } from './job-metrics';
import { createIssueProcessor } from './processor';
import { scheduleReconciler } from './reconcile-admissions';
import { createRejectionCounter } from './rejection-stats';
import { startUsageMetrics } from './usage-metrics';

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
  const codeSecret = requireCodeSecret();
  // Policy lookups of the issue path: the admission state in Redis and this process's cache of
  // codes and event triggers, both filled with the ACTIVE policies before the first job.
  const stopPolicyCache = await startPolicyCache(log);
  log.info({ policies: await warmPolicyMeta(redis) }, 'admission state warmed with the ACTIVE policies');
  const workerOptions = {
    prefix: cfg.QUEUE_PREFIX,
    concurrency: cfg.WORKER_CONCURRENCY,
    lockDuration: cfg.JOB_LOCK_MS,
    stalledInterval: cfg.JOB_STALLED_INTERVAL_MS,
    // A job whose worker died is handed out again; after three such losses it fails (and its stock is reconciled).
    maxStalledCount: 3,
    settings: { backoffStrategy: cappedBackoff },
  };
  const issueWorker = new Worker(QUEUES.issue, createIssueProcessor({ db, redis, locks, codeSecret }, log), { ...workerOptions, connection: createRedis('worker') });
  const checkoutWorker = new Worker(QUEUES.checkout, createCheckoutProcessor({ db, locks, redis, log }), {
    ...workerOptions,
    connection: createRedis('worker'),
  });
  const paymentsWorker = new Worker(QUEUES.payments, createCheckoutProcessor({ db, locks, redis, log }), { ...workerOptions, connection: createRedis('worker') });
  const workers = [issueWorker, checkoutWorker, paymentsWorker];
  for (const worker of workers) {
    worker.on('error', (error) => log.error({ err: error, queue: worker.name }, 'worker error'));
    // A job whose worker died or starved past its lock: it goes back to the queue and runs again.
    worker.on('stalled', (jobId) => log.warn({ jobId, queue: worker.name }, 'job stalled; handed to another worker'));
    worker.on('failed', (job, error) => {
      if (job && failedForGood(job)) {
        log.error({ jobId: job.id, queue: worker.name, traceId: (job.data as { traceId?: string }).traceId, err: error }, 'job failed for good');
      }
    });
    instrumentWorker(worker);
    batchAfterDrain(worker, worker === paymentsWorker ? cfg.PAYMENT_BATCH_WAIT_MS : cfg.WORKER_BATCH_WAIT_MS);
  }
  // Issue rejections for the stats routes, counted once a job's result is stored.
  const rejectionCounter = createRejectionCounter(redis, log);
  issueWorker.on('completed', (job, result) => rejectionCounter.countJob(job, result));
  watchJobFailures(log, cfg.ALERT_JOB_FAILURES_THRESHOLD, cfg.ALERT_JOB_FAILURES_WINDOW_MS);
  trackQueueDepth(Object.values(QUEUES).map((name) => queues.get(name)));
  const stopUsageMetrics = startUsageMetrics(log);
  const stopSweeper = scheduleExpirySweeper({ db, log }, cfg.RESERVATION_SWEEP_INTERVAL_MS);
  const stopCodesDrop = scheduleUnfetchedCodesDrop(log);
  // Events the bridge accepted whose jobs Redis lost are added again from the Postgres inbox (I11).
  const stopInboxSweep = scheduleInboxSweep({ queues, locks, log }, cfg.INBOX_SWEEP_INTERVAL_MS, cfg.INBOX_REDRIVE_AGE_MS);
  const stopReconciler = scheduleReconciler(
    { redis, locks, issueQueue: queues.get(QUEUES.issue), log },
    cfg.ADMISSION_RECONCILE_INTERVAL_MS,
    // Never younger than two lock periods: a live job's worker renews its lock well within that.
    Math.max(cfg.ADMISSION_RECONCILE_AGE_MS, cfg.JOB_LOCK_MS * 2),
  );

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    phase = 'draining';
    log.info({ signal }, 'worker draining: finishing in-flight jobs');
    stopReconciler();
    stopCodesDrop();
    // close() stops taking jobs and waits for the active ones; anything cut off is stalled and retried elsewhere.
    await Promise.all([...workers.map((w) => w.close()), stopSweeper(), stopInboxSweep()]);
    await queues.close();
    await stopPolicyCache();
    await stopUsageMetrics();
    await rejectionCounter.flushed();
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
  log.info({ concurrency: cfg.WORKER_CONCURRENCY, queues: workers.map((w) => w.name) }, 'worker started');
}

/**
 * When the queue runs dry, wait a moment before taking jobs again. A worker woken for every single
 * job spends about three times the CPU per job (worker and Redis alike) of one that takes a backlog
 * in a row; during a sale the wait lets a small backlog form, costing each job at most waitMs.
 */
function batchAfterDrain(worker: Worker, waitMs: number): void {
  if (waitMs <= 0) return;
  let resting = false;
  worker.on('drained', () => {
    if (resting || worker.closing) return;
    resting = true;
    void worker
      .pause(true)
      .then(() => new Promise((resolve) => setTimeout(resolve, waitMs)))
      .then(() => {
        if (!worker.closing) return worker.resume();
      })
      .finally(() => {
        resting = false;
      });
  });
}

main().catch((error: unknown) => {
  logger().fatal({ err: error }, 'worker failed to start');
  process.exit(1);
});
