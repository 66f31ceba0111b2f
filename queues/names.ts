// Queue names and job-id prefixes: the contract between the ingress and the workers.

export const QUEUES = {
  issue: 'issue',
} as const;

export type QueueName = (typeof QUEUES)[keyof typeof QUEUES];

/** A job id says which queue holds it, so GET /jobs/:id finds the job with one lookup. */
const PREFIX_BY_QUEUE: Record<QueueName, string> = {
  issue: 'iss',
};

export function newJobId(queue: QueueName, unique: string): string {
  return `${PREFIX_BY_QUEUE[queue]}_${unique}`;
}

export function queueOfJobId(jobId: string): QueueName | null {
  const prefix = jobId.split('_', 1)[0];
  const entry = Object.entries(PREFIX_BY_QUEUE).find(([, p]) => p === prefix);
  return entry ? (entry[0] as QueueName) : null;
}
