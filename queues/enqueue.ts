// Enqueue helpers: a job is in Redis before the client hears 202, or the client hears 503 (I7, I9).
import { randomUUID } from 'node:crypto';
import { AppError } from '../core/errors';
import type { Queues } from './connection';
import type { IssueJob } from './jobs';
import { newJobId, QUEUES, type QueueName } from './names';

const ENQUEUE_TIMEOUT_MS = 2_000;

async function addJob(queues: Queues, queue: QueueName, name: string, data: object, jobId: string): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      queues.get(queue).add(name, data, { jobId }),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('enqueue timed out')), ENQUEUE_TIMEOUT_MS);
      }),
    ]);
    return jobId;
  } catch (error) {
    throw new AppError('UNAVAILABLE', 'The request could not be queued; retry later.', undefined, error);
  } finally {
    clearTimeout(timer);
  }
}

export function enqueueIssue(queues: Queues, data: IssueJob): Promise<string> {
  return addJob(queues, QUEUES.issue, 'issue', data, newJobId(QUEUES.issue, randomUUID()));
}
