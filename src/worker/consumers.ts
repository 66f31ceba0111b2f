// The worker's queue consumers: one BullMQ Worker per queue (issue, checkout, payments), each with
// its processor, its log lines and metrics, and a short rest when its queue runs dry.
import { Worker } from 'bullmq';
import type { Sequelize } from 'sequelize';
import type { Redis } from 'ioredis';
import { config } from '../core/config';
import type { Locks } from '../core/lock';
import type { Logger } from '../core/logger';
import { createRedis } from '../core/redis';
import { createFinishedPublisher } from '../queues/finished';
import { QUEUES } from '../queues/names';
import { failedForGood, instrumentWorker } from '../observability/job-metrics';
import { createRejectionCounter } from '../observability/rejection-stats';
import { cappedBackoff } from './backoff';
import { createCheckoutProcessor } from './checkout-queue';
import { createIssueProcessor } from './issue-queue';

export interface ConsumerDeps {
  db: Sequelize;
  redis: Redis;
  locks: Locks;
  codeSecret: string;
  log: Logger;
}

export interface Consumers {
  workers: Worker[];
  /** Stops taking jobs and waits for the active ones; anything cut off is stalled and retried elsewhere. */
  close(): Promise<void>;
}

export function startConsumers(deps: ConsumerDeps): Consumers {
  const cfg = config();
  const { db, redis, locks, codeSecret, log } = deps;
  const options = {
    prefix: cfg.QUEUE_PREFIX,
    concurrency: cfg.WORKER_CONCURRENCY,
    lockDuration: cfg.JOB_LOCK_MS,
    stalledInterval: cfg.JOB_STALLED_INTERVAL_MS,
    // A job whose worker died is handed out again; after three such losses it fails (and its stock is reconciled).
    maxStalledCount: 3,
    settings: { backoffStrategy: cappedBackoff },
  };
  const consume = (queue: string, processor: ConstructorParameters<typeof Worker>[1]) =>
    new Worker(queue, processor, { ...options, connection: createRedis('worker') });
  const issueWorker = consume(QUEUES.issue, createIssueProcessor({ db, redis, locks, codeSecret }, log));
  const checkoutWorker = consume(QUEUES.checkout, createCheckoutProcessor({ db, locks, redis, log }));
  const paymentsWorker = consume(QUEUES.payments, createCheckoutProcessor({ db, locks, redis, log }));
  const workers = [issueWorker, checkoutWorker, paymentsWorker];
  for (const worker of workers) {
    worker.on('error', (error) => log.error({ err: error, queue: worker.name }, 'worker error'));
    // A job whose worker died or starved past its lock: it goes back to the queue and runs again.
    worker.on('stalled', (jobId) => log.warn({ jobId, queue: worker.name }, 'job stalled; handed to another worker'));
    worker.on('failed', (job, error) => {
      if (job && failedForGood(job)) {
        log.error(
          { jobId: job.id, queue: worker.name, traceId: (job.data as { traceId?: string }).traceId, err: error },
          'job failed for good',
        );
      }
    });
    instrumentWorker(worker);
    batchAfterDrain(worker, worker === paymentsWorker ? cfg.PAYMENT_BATCH_WAIT_MS : cfg.WORKER_BATCH_WAIT_MS);
  }
  // Issue rejections for the stats routes, counted once a job's result is stored.
  const rejectionCounter = createRejectionCounter(redis, log);
  issueWorker.on('completed', (job, result) => rejectionCounter.countJob(job, result));
  // The checkout queue's jobs, pushed to the web processes waiting for them once BullMQ stored them finished.
  const finishedJobs = createFinishedPublisher(redis, log);
  checkoutWorker.on('completed', (job, result) => finishedJobs.finished(job, result));
  checkoutWorker.on('failed', (job) => {
    if (job && failedForGood(job)) finishedJobs.finished(job);
  });
  return {
    workers,
    async close() {
      await Promise.all(workers.map((w) => w.close()));
      await Promise.all([rejectionCounter.flushed(), finishedJobs.flushed()]);
    },
  };
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
