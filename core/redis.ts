// Redis connections. Producers fail fast when Redis is away (that is how an unqueueable request gets 503);
// workers and blocking readers wait for Redis to come back.
import IORedis, { type Redis, type RedisOptions } from 'ioredis';
import { config } from './config';

export type RedisRole = 'producer' | 'worker' | 'client';

const roleOptions: Record<RedisRole, RedisOptions> = {
  // BullMQ Queue and the ingress: no offline queue, so a command while disconnected errors at once.
  // maxRetriesPerRequest 0: a command on the wire when the connection drops fails at once too; otherwise
  // ioredis keeps it to resend after a reconnect (it is never counted when the reconnect reaches
  // `connect`), so a request already answered 503 would be queued later, and the auto-pipeline stuck
  // behind it would hold every later add until Redis came back.
  // Auto-pipelining batches the adds of concurrent requests into one write per tick.
  producer: { enableOfflineQueue: false, maxRetriesPerRequest: 0, connectTimeout: 2_000, enableAutoPipelining: true },
  // BullMQ Worker and QueueEvents: blocking commands must retry forever.
  worker: { maxRetriesPerRequest: null, enableReadyCheck: true },
  // Plain commands from workers (admission scripts, locks): retry a little, then let the job retry.
  // Auto-pipelining sends the admissions of a batch's requests in one write.
  client: { maxRetriesPerRequest: 3, connectTimeout: 5_000, enableAutoPipelining: true },
};

export function createRedis(role: RedisRole, url = config().REDIS_URL): Redis {
  return new IORedis(url, {
    ...roleOptions[role],
    connectionName: `coupon-${role}`,
    retryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
  });
}

/** Resolves once the connection is ready, or rejects after timeoutMs. */
export function waitForReady(redis: Redis, timeoutMs = 10_000): Promise<void> {
  if (redis.status === 'ready') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`redis not ready after ${timeoutMs} ms`));
    }, timeoutMs);
    const onReady = () => {
      cleanup();
      resolve();
    };
    const cleanup = () => {
      clearTimeout(timer);
      redis.off('ready', onReady);
    };
    redis.on('ready', onReady);
  });
}
