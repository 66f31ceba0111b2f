// Reads the batch jobs behind request ids straight from BullMQ, for tests that check how jobs ran.
import { Queue, type Job } from 'bullmq';
import IORedis from 'ioredis';
import { parseRequestId } from '../../queues/names';

/** The issue jobs that carried these requests (one per batch), or undefined where a job is gone. */
export async function jobsCarrying(queuePrefix: string, requestIds: string[]): Promise<(Job | undefined)[]> {
  const connection = new IORedis(process.env.REDIS_URL as string, { maxRetriesPerRequest: null });
  const queue = new Queue('issue', { connection, prefix: queuePrefix });
  try {
    const jobIds = [...new Set(requestIds.map((id) => parseRequestId(id).jobId))];
    return await Promise.all(jobIds.map((id) => queue.getJob(id)));
  } finally {
    await queue.close();
    connection.disconnect();
  }
}

/** A job started more than once was taken over: retried, or handed on after its worker let it go. */
export const wasTakenOver = (job: Job) => job.attemptsStarted > 1 || job.stalledCounter > 0;
