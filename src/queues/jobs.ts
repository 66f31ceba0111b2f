// Payload schemas of every job, and how a finished job reads to a client. What the jobs return is in
// src/queues/results.ts.
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { boundedDateTime, MAX_MONEY } from '../core/bounds';
import type { ErrorCode } from '../core/errors';
import { PAYMENT_EVENT_TYPES } from '../domain/checkout-rules';
import { MAX_CODE_LENGTH, MAX_CODES_PER_JOB, MIN_CODE_LENGTH } from '../domain/codes';

/** An id as the API accepts it: 1-128 visible characters, no spaces or control characters. */
// No lone surrogates (\p{Cs}) either: they cannot be stored as text or jsonb in Postgres.
export const idSchema = z.string().regex(/^[^\s\p{Cc}\p{Cs}]{1,128}$/u, '1-128 visible characters without spaces');

export const reasonSchema = z.object({ code: z.string(), message: z.string() });

/** Every job carries who asked and the trace id of the request that created it. */
const jobMeta = {
  userId: idSchema,
  traceId: z.string().min(1).max(128),
  requestedAt: z.iso.datetime(),
};

/** A keyed hash of a coupon code (src/storage/codes.ts): what stands for a single-use code anywhere but its redeemer's request. */
export const codeHashSchema = z.string().regex(/^[0-9a-f]{64}$/, 'a code hash');

export const issueJobSchema = z.object({
  ...jobMeta,
  // Null only for a code that names no policy: the request is answered CODE_NOT_FOUND.
  policyId: idSchema.nullable(),
  // Who asked when an admin issues for a user; equal to userId otherwise.
  actorId: idSchema,
  // How the request names its policy: by id (FIRST_COME and DOWNLOAD policies), by a CODE policy's
  // shared code, or by a single-use code (its hash; the coupon carries it). Absent means by id.
  via: z.enum(['policy', 'shared-code', 'single-code']).optional(),
  codeHash: codeHashSchema.optional(),
});
export type IssueJob = z.infer<typeof issueJobSchema>;

/** An admin's grant of a DIRECT policy to many users at once; userId is the admin (the job's owner). */
export const MAX_DIRECT_ISSUE_USERS = 1000;
export const directIssueJobSchema = z.object({
  ...jobMeta,
  policyId: idSchema,
  userIds: z.array(idSchema).min(1).max(MAX_DIRECT_ISSUE_USERS),
});
export type DirectIssueJob = z.infer<typeof directIssueJobSchema>;

/** Generates single-use codes of a CODE policy; userId is the admin (the job's owner). */
export const generateCodesJobSchema = z.object({
  ...jobMeta,
  policyId: idSchema,
  count: z.number().int().min(1).max(MAX_CODES_PER_JOB),
  length: z.number().int().min(MIN_CODE_LENGTH).max(MAX_CODE_LENGTH),
  prefix: z
    .string()
    .regex(/^[A-Z0-9-]{1,16}$/)
    .optional(),
});
export type GenerateCodesJob = z.infer<typeof generateCodesJobSchema>;

/** A message of the user-events topic (SPEC §6); fields beyond these are ignored. */
export const userEventSchema = z.object({
  eventId: idSchema,
  type: z.string().regex(/^[A-Z][A-Z0-9_]{1,63}$/, 'an event type such as USER_SIGNED_UP'),
  userId: idSchema,
  occurredAt: boundedDateTime(),
});
export type UserEvent = z.infer<typeof userEventSchema>;

/** An event from Kafka as a job: the event, and where in Kafka it came from (for the logs). */
const kafkaEventJob = <E extends z.ZodType>(event: E) =>
  z.object({
    event,
    traceId: z.string().min(1).max(128),
    source: z.object({ topic: z.string(), partition: z.number().int(), offset: z.string() }),
    receivedAt: z.iso.datetime(),
  });

export const userEventJobSchema = kafkaEventJob(userEventSchema);
export type UserEventJob = z.infer<typeof userEventJobSchema>;

/**
 * Issue requests that reached one web process in the same moment travel as one job: one add, one
 * fetch, one completion for many requests. Each keeps its own request id (`<jobId>.<index>`), which
 * is the id its client polls, and its own trace id.
 */
export const MAX_ISSUE_BATCH = 128;
export const issueBatchSchema = z.object({
  requests: z
    .array(
      issueJobSchema.extend({
        requestId: z.string().min(1).max(140),
        // Set when the web admitted the request already (it holds a slot): the policy's quantity and
        // its admission count then, for the sell-out alerts.
        admittedAs: z.object({ total: z.number().int().nullable(), admitted: z.number().int().nullable() }).optional(),
      }),
    )
    .min(1)
    .max(MAX_ISSUE_BATCH),
});
export type IssueBatch = z.infer<typeof issueBatchSchema>;

/** Money in the smallest currency unit: a non-negative integer, at most a trillion. */
export const moneySchema = z.number().int().min(0).max(MAX_MONEY);

export const reserveJobSchema = z.object({
  ...jobMeta,
  couponId: idSchema,
  orderId: idSchema,
  orderAmount: moneySchema,
  /** reserveRequestId(user, key); jobs queued before it existed use their job id, which had that form. */
  requestId: z.string().min(1).max(140).optional(),
});
export type ReserveJob = z.infer<typeof reserveJobSchema>;

/** A stable digest of a JSON body: key order does not matter. */
export function bodyFingerprint(body: Record<string, unknown>): string {
  const canonical = JSON.stringify(
    Object.keys(body)
      .sort()
      .map((k) => [k, body[k]]),
  );
  return createHash('sha256').update(canonical).digest('hex');
}

/** The fingerprint of a reserve request's body: what an Idempotency-Key is bound to (I8). */
export function reserveFingerprint(body: { couponId: string; orderId: string; orderAmount: number }): string {
  return bodyFingerprint({ couponId: body.couponId, orderId: body.orderId, orderAmount: body.orderAmount });
}

/** Cancel (owner or admin) and confirm (admin) of one reservation; userId is the reservation's owner. */
export const reservationActionJobSchema = z.object({
  ...jobMeta,
  reservationId: idSchema,
  actorId: idSchema,
});
export type ReservationActionJob = z.infer<typeof reservationActionJobSchema>;

/** A message of the payments topic (SPEC §6). Fields beyond these are ignored, so producers can add some. */
export const paymentEventSchema = z.object({
  eventId: idSchema,
  type: z.enum(PAYMENT_EVENT_TYPES),
  orderId: idSchema,
  reservationId: idSchema.optional(),
  userId: idSchema.optional(),
  amount: moneySchema.optional(),
  occurredAt: boundedDateTime(),
});
export type PaymentEvent = z.infer<typeof paymentEventSchema>;

export const paymentJobSchema = kafkaEventJob(paymentEventSchema);
export type PaymentJob = z.infer<typeof paymentJobSchema>;

// The coupon an issue request returns is the model's view of it; its type is part of these contracts.
export type { CouponView } from '../domain/coupon-view';

/** What a processor returns (its schema: src/queues/results.ts outcomeSchema). A business refusal is a result, never a thrown error, so it is not retried. */
export type JobOutcome<T> =
  | { outcome: 'succeeded'; result: T }
  | { outcome: 'rejected'; reason: { code: ErrorCode; message: string } }
  // Only inside a batch: this request failed for good while the others of its batch finished.
  | { outcome: 'failed'; reason: { code: ErrorCode; message: string } };

export const JOB_STATUSES = ['pending', 'succeeded', 'rejected', 'failed'] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];

export interface JobView {
  id: string;
  type: string;
  status: JobStatus;
  result?: unknown;
  reason?: { code: string; message: string };
  createdAt: string;
  finishedAt?: string;
  /** How far a long job (a grant, code generation) got while it runs: {done, total}. */
  progress?: unknown;
}
