// Queue names, job names and job ids: the contract between the ingress and the workers.
import { createHash } from 'node:crypto';
import { redisKeys, type RedisKeys } from '../core/redis-keys';

export const QUEUES = {
  /** Issue requests, in batches (one job per web process and event-loop turn). */
  issue: 'issue',
  /** Reserve, cancel and confirm requests of the API: each job changes one reservation. */
  checkout: 'checkout',
  /** Payment events from Kafka, one job each. Apart from checkout, so the finished jobs the workers
   * push to the web (src/queues/finished.ts) are only the ones its clients wait on, and the payment
   * backlog is visible on its own. */
  payments: 'payments',
} as const;

export type QueueName = (typeof QUEUES)[keyof typeof QUEUES];

/** Every kind of job, the queue that carries it and the prefix of its ids. */
export const JOB_KINDS = {
  'issue-batch': { queue: QUEUES.issue, prefix: 'iss' },
  /** An admin's grant of one policy to up to 1,000 users: requests `<jobId>.<index of the user>`. */
  'direct-issue': { queue: QUEUES.issue, prefix: 'dir' },
  /** A user event from Kafka: one request `<jobId>.<policyId>` per EVENT policy it triggers. */
  'user-event': { queue: QUEUES.issue, prefix: 'uev' },
  /** Generates a CODE policy's single-use codes. */
  'generate-codes': { queue: QUEUES.issue, prefix: 'cod' },
  reserve: { queue: QUEUES.checkout, prefix: 'rsv' },
  cancel: { queue: QUEUES.checkout, prefix: 'cnl' },
  confirm: { queue: QUEUES.checkout, prefix: 'cnf' },
  payment: { queue: QUEUES.payments, prefix: 'pay' },
} as const;

export type JobKind = keyof typeof JOB_KINDS;

/** A job id says which queue holds it, so GET /jobs/:id finds the job with one lookup. */
export function newJobId(kind: JobKind, unique: string): string {
  return `${JOB_KINDS[kind].prefix}_${unique}`;
}

/**
 * A job id derived from what makes a request unique (an idempotency key, a Kafka event id, a
 * reservation): adding it again while the job exists is a no-op, so retries and redeliveries
 * collapse into one job. Hashed, because BullMQ ids must not contain ':' and keys are user input.
 */
export function derivedJobId(kind: JobKind, ...parts: string[]): string {
  const digest = createHash('sha256').update(parts.join('\u0000')).digest('hex').slice(0, 40);
  return newJobId(kind, digest);
}

/**
 * The Postgres request id of a reserve under an Idempotency-Key (reservations.request_id): one per
 * (user, key), whatever the body, so Postgres finds what a key reserved and tells another body from
 * a replay (the fingerprint). Before 0010 it was the job id itself; it still has that form.
 */
export function reserveRequestId(userId: string, key: string): string {
  return derivedJobId('reserve', userId, key);
}

/**
 * The Redis record of an issue request's Idempotency-Key (`<fingerprint>|<requestId>|<claimed ms>`,
 * 24 h): scoped to the caller like a reserve's, apart from it by the kind in the name.
 */
export function issueIdempotencyRecordKey(userId: string, key: string, keys: RedisKeys = redisKeys()): string {
  return keys.idempotency(derivedJobId('issue-batch', userId, key));
}

/**
 * The job id of a reserve: one per (user, key, body), `<request id>-<fingerprint, 32 hex>`. A replay
 * of the same body re-adds the same job (a no-op while it exists); another body under the key is
 * another job, never the first one's answer, even when the Redis record of the key is gone (its
 * worker refuses it from Postgres). The id names the reservation's request id, so the answer of a
 * reserve outlives its job: GET /jobs/:id finds the reservation in Postgres (parseReserveJobId).
 */
export function reserveJobId(userId: string, key: string, bodyFingerprint: string): string {
  return `${reserveRequestId(userId, key)}-${bodyFingerprint.slice(0, RESERVE_FINGERPRINT_CHARS)}`;
}

const RESERVE_FINGERPRINT_CHARS = 32;
const RESERVE_JOB_ID = new RegExp(`^(${JOB_KINDS.reserve.prefix}_[0-9a-f]{40})-([0-9a-f]{${RESERVE_FINGERPRINT_CHARS}})$`);

/** The request id and the start of the body's fingerprint a reserve's job id carries; null for any other id. */
export function parseReserveJobId(jobId: string): { requestId: string; fingerprintPrefix: string } | null {
  const match = RESERVE_JOB_ID.exec(jobId);
  return match ? { requestId: match[1] as string, fingerprintPrefix: match[2] as string } : null;
}

/**
 * A request inside a job that carries several is `<jobId>.<part>`: its id names the job that carries
 * it (job ids never contain a dot). The part is the request's index in a batch or grant, or the
 * policy id a user event issues.
 */
export function requestIdOf(jobId: string, part: number | string): string {
  return `${jobId}.${part}`;
}

/** The job of a request id, and its index when the part is one (only batch requests are polled alone). */
export function parseRequestId(id: string): { jobId: string; index: number | null } {
  const dot = id.indexOf('.');
  if (dot < 0) return { jobId: id, index: null };
  const part = id.slice(dot + 1);
  return { jobId: id.slice(0, dot), index: /^\d{1,9}$/.test(part) ? Number(part) : null };
}

export function queueOfJobId(jobId: string): QueueName | null {
  const prefix = jobId.split('_', 1)[0];
  const kind = Object.values(JOB_KINDS).find((k) => k.prefix === prefix);
  return kind ? kind.queue : null;
}
