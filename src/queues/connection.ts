// The queues a process talks to, created once over shared Redis connections and closed together.
import { Queue, QueueEvents, type JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';
import { config } from '../core/config';
import { createRedis } from '../core/redis';
import type { JobKind, QueueName } from './names';

/** Defaults per queue: retries for system faults, bounded history so Redis memory stays flat. */
export const JOB_OPTIONS: Record<QueueName, JobsOptions> = {
  issue: {
    attempts: 5,
    backoff: { type: 'exponential', delay: 250 },
    // A finished batch (up to 128 requests, up to 64 KB) is needed by nobody: each request's outcome
    // is its own record (src/queues/outcomes.ts, a day) and its coupon is in Postgres. Kept an hour, at
    // most 10,000 (50,000 were about 3 GB); grants and code generations keep theirs a day (below).
    removeOnComplete: { age: 3600, count: 10_000 },
    removeOnFail: { age: 7 * 24 * 3600, count: 50_000 },
  },
  checkout: {
    attempts: 8,
    backoff: { type: 'exponential', delay: 250 },
    // Bounded by age and size (about 1 KB a job): a day at 1,000 checkouts a second would be 86
    // million jobs. A reservation's answer outlives its job (GET /jobs/:id reads it from Postgres),
    // and a replay of a key whose job is gone is decided by Postgres (I8).
    removeOnComplete: { age: 3600, count: 100_000 },
    removeOnFail: { age: 7 * 24 * 3600, count: 50_000 },
  },
  payments: {
    // A payment must not be lost to an outage: system faults are retried for about an hour and a
    // half (backoff doubling from 250 ms, capped at a minute: src/worker/backoff.ts). Its offset is
    // committed already, so a job that gave up waits in the failed set (kept 7 days) for a retry;
    // its event stays in the inbox until applied, and the inbox sweep adds the job again should
    // Redis no longer have it (src/usecases/inbox-sweep.ts).
    attempts: 100,
    backoff: { type: 'capped', delay: 250 },
    removeOnComplete: { age: 24 * 3600, count: 200_000 },
    removeOnFail: { age: 7 * 24 * 3600, count: 50_000 },
  },
};

/**
 * Per kind of job, where it differs from its queue's defaults. A user event's Kafka offset is
 * committed once it is in the inbox and its job exists, so, like a payment, it must outlast an outage (about 90 minutes,
 * backoff capped at a minute); a code generation's or a grant's result (read through
 * GET /jobs/:id) must outlive a sale's flood of issue batches, so it is kept for its day whatever their number.
 */
export const KIND_OPTIONS: Partial<Record<JobKind, JobsOptions>> = {
  'user-event': { attempts: 100, backoff: { type: 'capped', delay: 250 } },
  'direct-issue': { removeOnComplete: { age: 24 * 3600 } },
  'generate-codes': { removeOnComplete: { age: 24 * 3600 } },
};

export interface Queues {
  get(name: QueueName): Queue;
  events(name: QueueName): QueueEvents;
  connection: Redis;
  close(): Promise<void>;
}

/** `redisUrl` defaults to REDIS_URL; tests pass another to put a fault-injecting proxy in between. */
export function createQueues(redisUrl = config().REDIS_URL): Queues {
  const prefix = config().QUEUE_PREFIX;
  const connection = createRedis('producer', redisUrl);
  const queues = new Map<QueueName, Queue>();
  const events = new Map<QueueName, QueueEvents>();
  return {
    connection,
    get(name) {
      let queue = queues.get(name);
      if (!queue) {
        queue = new Queue(name, { connection, prefix, defaultJobOptions: JOB_OPTIONS[name] });
        // Errors surface where a call fails (add → 503); the emitter must not crash the process.
        queue.on('error', () => {});
        // Every long-polling GET /jobs/:id listens for the queue closing while it waits.
        queue.setMaxListeners(0);
        queues.set(name, queue);
      }
      return queue;
    },
    events(name) {
      let qe = events.get(name);
      if (!qe) {
        // QueueEvents blocks on XREAD, so it gets its own connection that retries forever.
        qe = new QueueEvents(name, { connection: createRedis('worker', redisUrl), prefix });
        qe.on('error', () => {});
        qe.setMaxListeners(0);
        events.set(name, qe);
      }
      return qe;
    },
    async close() {
      await Promise.allSettled([...queues.values()].map((q) => q.close()));
      await Promise.allSettled([...events.values()].map((e) => e.close()));
      connection.disconnect();
    },
  };
}
