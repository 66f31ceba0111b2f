// The outcome of each issue request, kept where a poll reads it in one HGET and pushed to the web
// processes the moment it is known. A batch job carries many requests; reading the job to answer one
// of them would load and parse all of them, so each request's outcome is stored on its own:
//
//   <QUEUE_PREFIX>:out:<batchJobId>   hash  <index> -> StoredOutcome (JSON), for 24 hours
//   <QUEUE_PREFIX>:outcomes           channel: one message per batch a worker finished
//
// (both named in src/core/redis-keys.ts)
//
// The web writes a record for every request of a turn before its job is added: the final outcome
// of a request it decided itself (a refusal), `pending` for one the job carries. The worker
// overwrites the pending ones with their final outcome once the batch is decided, then publishes
// them. A record says `succeeded` only once the coupon is committed in Postgres.
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { redisKeys } from '../core/redis-keys';
import { logger, type Logger } from '../core/logger';
import { couponViewSchema } from '../domain/coupon-view';
import { JOB_STATUSES, reasonSchema, type JobView } from './jobs';
import type { Queues } from './connection';
import { QUEUES, parseRequestId } from './names';

/** As long as a batch job's result is kept (src/queues/connection.ts). */
export const OUTCOME_TTL_MS = 24 * 3600 * 1000;

/**
 * How old an admission, or an outcome record, must be before the absence of its batch job means the
 * job will never come: the web admits a turn's requests and writes their records a moment before it
 * adds the job, so a job missing for longer belongs to a web process that died in between.
 */
export const ORPHAN_ADMISSION_AGE_MS = 5_000;

export const storedOutcomeSchema = z.object({
  /** pending | succeeded | rejected | failed */
  s: z.enum(JOB_STATUSES),
  /** The user the request is for (the owner of its job view). */
  u: z.string(),
  /** createdAt and finishedAt, epoch milliseconds. */
  c: z.number(),
  f: z.number().optional(),
  /** The coupon, for a succeeded request. */
  r: couponViewSchema.optional(),
  /** The reason, for a rejected or failed request. */
  e: reasonSchema.optional(),
  /** 1 when the web decided the request itself (it never became a job). */
  w: z.literal(1).optional(),
});
export type StoredOutcome = z.infer<typeof storedOutcomeSchema>;

/** A published message: the batch job and the final outcomes of the requests it decided. */
export interface OutcomeMessage {
  job: string;
  outcomes: [index: number, outcome: StoredOutcome][];
}

/**
 * A published message with its outcomes unread: a web process reads only the outcomes of requests
 * it waits for (parseStoredOutcome), not the whole batch, on every message of a sale.
 */
export const outcomeMessageSchema = z.object({
  job: z.string(),
  outcomes: z.array(z.tuple([z.number().int(), z.unknown()])),
});

/**
 * A stored or published outcome read through its schema (a string is JSON first); null, with a
 * warning, for one that does not read: it is answered as if none were stored.
 */
export function parseStoredOutcome(value: unknown, requestId: string, log: Logger = logger()): StoredOutcome | null {
  let parsed: ReturnType<typeof storedOutcomeSchema.safeParse>;
  try {
    parsed = storedOutcomeSchema.safeParse(typeof value === 'string' ? JSON.parse(value) : value);
  } catch (error) {
    log.warn({ err: error, jobId: requestId }, 'unreadable outcome record; read as none');
    return null;
  }
  if (parsed.success) return parsed.data;
  log.warn({ jobId: requestId, issue: parsed.error.issues[0]?.message }, 'malformed outcome record; read as none');
  return null;
}

/** The job view of one request from its stored outcome; ownerId is for the access check. */
export function viewOfOutcome(requestId: string, o: StoredOutcome): JobView & { ownerId: string } {
  return {
    id: requestId,
    type: 'issue',
    status: o.s,
    ...(o.r !== undefined && { result: o.r }),
    ...(o.e && { reason: o.e }),
    createdAt: new Date(o.c).toISOString(),
    ...(o.f !== undefined && { finishedAt: new Date(o.f).toISOString() }),
    ownerId: o.u,
  };
}

/**
 * Stores outcomes of requests of one batch job (fields by request index) in one transaction, and
 * with `publish` also tells every web process in it: one round trip either way, and no web hears
 * of an outcome a poll could not read yet.
 */
export async function storeOutcomes(
  redis: Redis,
  batchJobId: string,
  outcomes: OutcomeMessage['outcomes'],
  publish = false,
): Promise<void> {
  if (outcomes.length === 0) return;
  const key = redisKeys().outcomes(batchJobId);
  const fields = outcomes.flatMap(([index, o]) => [String(index), JSON.stringify(o)]);
  const tx = redis
    .multi()
    .hset(key, ...fields)
    .pexpire(key, OUTCOME_TTL_MS);
  if (publish) tx.publish(redisKeys().outcomesChannel(), JSON.stringify({ job: batchJobId, outcomes } satisfies OutcomeMessage));
  const replies = await tx.exec();
  const failed = replies?.find(([error]) => error)?.[0];
  if (failed) throw failed;
}

/** Stores the final outcomes of a batch's requests and tells every web process, in one round trip. */
export function publishOutcomes(redis: Redis, batchJobId: string, outcomes: OutcomeMessage['outcomes']): Promise<void> {
  return storeOutcomes(redis, batchJobId, outcomes, true);
}

/** The stored outcome of one request of a batch (`<jobId>.<index>`); null when none is stored, or it does not read. */
export async function readOutcome(redis: Redis, requestId: string, log?: Logger): Promise<StoredOutcome | null> {
  const { jobId, index } = parseRequestId(requestId);
  if (index === null) return null;
  const raw = await redis.hget(redisKeys().outcomes(jobId), String(index));
  return raw === null ? null : parseStoredOutcome(raw, requestId, log);
}

/** The final outcomes stored for these requests of one batch (undefined where none is, it is pending, or it does not read). */
export async function readFinalOutcomes(
  redis: Redis,
  batchJobId: string,
  requestIds: string[],
  log?: Logger,
): Promise<(StoredOutcome | undefined)[]> {
  const indexes = requestIds.map((id) => parseRequestId(id).index);
  const fields = indexes.flatMap((i) => (i === null ? [] : [String(i)]));
  if (fields.length === 0) return requestIds.map(() => undefined);
  const raw = await redis.hmget(redisKeys().outcomes(batchJobId), ...fields);
  const byIndex = new Map(fields.map((f, k) => [f, raw[k]]));
  return indexes.map((i, k) => {
    const value = i === null ? null : byIndex.get(String(i));
    if (!value) return undefined;
    const outcome = parseStoredOutcome(value, requestIds[k]!, log);
    return outcome?.s === 'pending' ? undefined : (outcome ?? undefined);
  });
}

/**
 * Where the batch job carrying a request stands, in one HMGET of the job's hash: `absent` (never
 * added, or removed), `running` (queued or active), `finished` (completed or failed for good).
 */
export async function batchJobState(queues: Queues, requestId: string): Promise<'absent' | 'running' | 'finished'> {
  const jobKey = queues.get(QUEUES.issue).toKey(parseRequestId(requestId).jobId);
  const [timestamp, finishedOn] = await queues.connection.hmget(jobKey, 'timestamp', 'finishedOn');
  return finishedOn !== null ? 'finished' : timestamp !== null ? 'running' : 'absent';
}
