// What every worker runs on a timer besides its queues: the reservation timeout sweep (I6), the
// admission reconciler (I3), the inbox sweep (I11), the drop of generated codes nobody fetched,
// and the usage metrics.
import type { Sequelize } from 'sequelize';
import type { Redis } from 'ioredis';
import { config } from '../core/config';
import type { Locks } from '../core/lock';
import type { Logger } from '../core/logger';
import type { Queues } from '../queues/connection';
import { QUEUES } from '../queues/names';
import { startUsageMetrics } from '../observability/usage-metrics';
import { scheduleUnfetchedCodesDrop } from '../usecases/generate-codes';
import { scheduleInboxSweep } from '../usecases/inbox-sweep';
import { scheduleReconciler } from '../usecases/reconcile-admissions';
import { scheduleExpirySweeper } from './expiry-schedule';

export interface ScheduleDeps {
  db: Sequelize;
  redis: Redis;
  locks: Locks;
  queues: Queues;
  log: Logger;
}

/** Starts them all; the function returned stops them, waiting for a round in progress. */
export function startSchedules(deps: ScheduleDeps): () => Promise<void> {
  const cfg = config();
  const { db, redis, locks, queues, log } = deps;
  const stopUsageMetrics = startUsageMetrics(log);
  const stopSweeper = scheduleExpirySweeper({ db, log }, cfg.RESERVATION_SWEEP_INTERVAL_MS);
  const stopCodesDrop = scheduleUnfetchedCodesDrop({ db, log });
  // Events the bridge accepted whose jobs Redis lost are added again from the Postgres inbox (I11).
  const stopInboxSweep = scheduleInboxSweep({ db, queues, locks, log }, cfg.INBOX_SWEEP_INTERVAL_MS, cfg.INBOX_REDRIVE_AGE_MS);
  const stopReconciler = scheduleReconciler(
    { db, redis, locks, issueQueue: queues.get(QUEUES.issue), log },
    cfg.ADMISSION_RECONCILE_INTERVAL_MS,
    // Never younger than two lock periods: a live job's worker renews its lock well within that.
    Math.max(cfg.ADMISSION_RECONCILE_AGE_MS, cfg.JOB_LOCK_MS * 2),
  );
  return async () => {
    stopReconciler();
    stopCodesDrop();
    await Promise.all([stopSweeper(), stopInboxSweep()]);
    await stopUsageMetrics();
  };
}
