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

/** A request inside a batch job is `<jobId>.<index>`: its id names the job that carries it. */
export function requestIdOf(jobId: string, index: number): string {
  return `${jobId}.${index}`;
}

export function parseRequestId(id: string): { jobId: string; index: number | null } {
  const dot = id.lastIndexOf('.');
  if (dot < 0) return { jobId: id, index: null };
  return { jobId: id.slice(0, dot), index: Number(id.slice(dot + 1)) };
}

export function queueOfJobId(jobId: string): QueueName | null {
  const prefix = jobId.split('_', 1)[0];
  const entry = Object.entries(PREFIX_BY_QUEUE).find(([, p]) => p === prefix);
  return entry ? (entry[0] as QueueName) : null;
}
