// Payload and result schemas of every job, and how a finished job reads to a client.
import { z } from 'zod';
import type { ErrorCode } from '../core/errors';

/** An id as the API accepts it: 1-128 visible characters, no spaces or control characters. */
export const idSchema = z.string().regex(/^[^\s\p{Cc}]{1,128}$/u, '1-128 visible characters without spaces');

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
