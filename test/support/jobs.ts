// Reads the batch jobs behind request ids straight from BullMQ, for tests that check how jobs ran.
import { Queue, type Job } from 'bullmq';
import IORedis from 'ioredis';
import type { IssueBatch } from '../../src/queues/jobs';
import { parseRequestId } from '../../src/queues/names';
import { storedOutcomeSchema } from '../../src/queues/outcomes';
import { redisKeysUnder } from '../../src/core/redis-keys';

/**
 * The issue jobs that carried these requests (one per batch), or undefined where a job is gone.
 * Requests the web decided itself (refusals) never became jobs and are left out.
 */
export async function jobsCarrying(queuePrefix: string, requestIds: string[]): Promise<(Job | undefined)[]> {
  const connection = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
  const queue = new Queue('issue', { connection, prefix: queuePrefix });
  try {
    const carried = await Promise.all(
      requestIds.map(async (id) => {
        const { jobId, index } = parseRequestId(id);
        const raw = await connection.hget(redisKeysUnder(queuePrefix).outcomes(jobId), String(index));
        return raw !== null && storedOutcomeSchema.parse(JSON.parse(raw)).w === 1 ? null : id;
      }),
    );
    const jobIds = [...new Set(carried.flatMap((id) => (id === null ? [] : [parseRequestId(id).jobId])))];
    return await Promise.all(jobIds.map((id) => queue.getJob(id)));
  } finally {
    await queue.close();
    connection.disconnect();
  }
}

/** A job started more than once was taken over: retried, or handed on after its worker let it go. */
export const wasTakenOver = (job: Job) => job.attemptsStarted > 1 || job.stalledCounter > 0;

/** A queue of a test stack, read straight from BullMQ; `use` runs with it open. */
export async function withQueue<T>(queuePrefix: string, name: string, use: (queue: Queue, connection: IORedis) => Promise<T>): Promise<T> {
  const connection = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
  const queue = new Queue(name, { connection, prefix: queuePrefix });
  try {
    return await use(queue, connection);
  } finally {
    await queue.close();
    connection.disconnect();
  }
}

/** The ids of a queue's jobs that are active now (taken by a worker, not finished). */
export function activeJobIds(queuePrefix: string, name: string): Promise<string[]> {
  return withQueue(queuePrefix, name, async (queue) => (await queue.getJobs(['active'])).map((j) => j.id as string));
}

/** How many admissions of a policy are pending: slots held whose coupon is not committed yet. */
export function pendingAdmissions(queuePrefix: string, policyId: string): Promise<number> {
  return withQueue(queuePrefix, 'issue', (_queue, connection) => connection.hlen(redisKeysUnder(queuePrefix).admission(policyId).pending));
}

/**
 * The issue jobs active now that carry a request whose admission is pending: a worker has the job
 * and the request holds a slot whose coupon is not committed yet. Work a crash would cut off.
 */
export function admittedJobsInFlight(queuePrefix: string, policyId: string): Promise<string[]> {
  return withQueue(queuePrefix, 'issue', async (queue, connection) => {
    const [active, pending] = await Promise.all([
      queue.getJobs(['active']),
      connection.hkeys(redisKeysUnder(queuePrefix).admission(policyId).pending),
    ]);
    const held = new Set(pending);
    return active.filter((j) => (j.data as IssueBatch).requests.some((r) => held.has(r.requestId))).map((j) => j.id as string);
  });
}

/** The jobs of a queue by id (undefined where one is gone). */
export function jobsById(queuePrefix: string, name: string, ids: string[]): Promise<(Job | undefined)[]> {
  return withQueue(queuePrefix, name, (queue) => Promise.all(ids.map((id) => queue.getJob(id))));
}
