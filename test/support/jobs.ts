// Reads the batch jobs behind request ids straight from BullMQ, for tests that check how jobs ran.
import { Queue, type Job } from 'bullmq';
import IORedis from 'ioredis';
import { parseRequestId } from '../../queues/names';

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
        const raw = await connection.hget(`${queuePrefix}:out:${jobId}`, String(index));
        return raw !== null && (JSON.parse(raw) as { w?: number }).w === 1 ? null : id;
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
