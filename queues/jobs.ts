// Payload and result schemas of every job, and how a finished job reads to a client.
import { z } from 'zod';
import type { ErrorCode } from '../core/errors';
import { PAYMENT_EVENT_TYPES } from '../models/checkout-rules';

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

export const issueJobSchema = z.object({
  ...jobMeta,
  policyId: idSchema,
  // Who asked when an admin issues for a user; equal to userId otherwise.
  actorId: idSchema,
});
export type IssueJob = z.infer<typeof issueJobSchema>;

/**
 * Issue requests that reached one web process in the same moment travel as one job: one add, one
 * fetch, one completion for many requests. Each keeps its own request id (`<jobId>.<index>`), which
 * is the id its client polls, and its own trace id.
 */
export const MAX_ISSUE_BATCH = 128;
export const issueBatchSchema = z.object({
  requests: z.array(issueJobSchema.extend({ requestId: z.string().min(1).max(140) })).min(1).max(MAX_ISSUE_BATCH),
});
export type IssueBatch = z.infer<typeof issueBatchSchema>;

/** Money in the smallest currency unit: a non-negative integer, at most a trillion. */
export const moneySchema = z.number().int().min(0).max(1_000_000_000_000);

export const reserveJobSchema = z.object({
  ...jobMeta,
  couponId: idSchema,
  orderId: idSchema,
  orderAmount: moneySchema,
});
export type ReserveJob = z.infer<typeof reserveJobSchema>;

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
  occurredAt: z.iso.datetime({ offset: true }),
});
export type PaymentEvent = z.infer<typeof paymentEventSchema>;

/** A payment event as a job: the event, and where in Kafka it came from (for the logs). */
export const paymentJobSchema = z.object({
  event: paymentEventSchema,
  traceId: z.string().min(1).max(128),
  source: z.object({ topic: z.string(), partition: z.number().int(), offset: z.string() }),
  receivedAt: z.iso.datetime(),
});
export type PaymentJob = z.infer<typeof paymentJobSchema>;

export const couponViewSchema = z.object({
  id: z.string(),
  policyId: z.string(),
  userId: z.string(),
  status: z.enum(['AVAILABLE', 'RESERVED', 'USED', 'EXPIRED']),
  issuedAt: z.string(),
  expiresAt: z.string(),
  reservedAt: z.string().optional(),
  usedAt: z.string().optional(),
  orderId: z.string().optional(),
  reservationId: z.string().optional(),
});
export type CouponView = z.infer<typeof couponViewSchema>;

/** What a processor returns. A business refusal is a result, never a thrown error, so it is not retried. */
export type JobOutcome<T> =
  | { outcome: 'succeeded'; result: T }
  | { outcome: 'rejected'; reason: { code: ErrorCode; message: string } }
  // Only inside a batch: this request failed for good while the others of its batch finished.
  | { outcome: 'failed'; reason: { code: ErrorCode; message: string } };

export const jobOutcomeSchema = z.discriminatedUnion('outcome', [
  z.object({ outcome: z.literal('succeeded'), result: z.unknown() }),
  z.object({ outcome: z.literal('rejected'), reason: reasonSchema }),
  z.object({ outcome: z.literal('failed'), reason: reasonSchema }),
]);

export type JobStatus = 'pending' | 'succeeded' | 'rejected' | 'failed';

export interface JobView {
  id: string;
  type: string;
  status: JobStatus;
  result?: unknown;
  reason?: { code: string; message: string };
  createdAt: string;
  finishedAt?: string;
}
