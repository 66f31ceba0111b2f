// What the jobs return: BullMQ keeps it as the job's returnvalue, and it is read again by GET
// /jobs/:id, by the metrics and rejection counters, and by tests and benches. Each processor returns
// the type inferred here and each reader parses with the schema, so the writer and its readers
// agree on one shape. The shapes are the API's (docs/API.md, src/web/openapi.ts): a job's result
// reaches its client as the job view's `result`, with the keys in the order the workers write them.
import { z } from 'zod';
import { couponViewSchema } from '../domain/coupon-view';
import { reasonSchema } from './jobs';

/** The schema of JobOutcome<T> (src/queues/jobs.ts) whose success carries `result`. */
export function outcomeSchema<R extends z.ZodType>(result: R) {
  return z.discriminatedUnion('outcome', [
    z.object({ outcome: z.literal('succeeded'), result }),
    z.object({ outcome: z.literal('rejected'), reason: reasonSchema }),
    z.object({ outcome: z.literal('failed'), reason: reasonSchema }),
  ]);
}

/** Any job's outcome with its result unread: for the jobs whose result has no schema of its own here. */
export const jobOutcomeSchema = outcomeSchema(z.unknown());

// ── issue-batch ──────────────────────────────────────────────────────────────────────────────────
/** The outcome of one issue request: its coupon, or why not. */
export const issueOutcomeSchema = outcomeSchema(couponViewSchema);
export type IssueOutcome = z.infer<typeof issueOutcomeSchema>;

/** An issue batch's result: one outcome per request, in the order of the job's requests. */
export const issueBatchReturnSchema = z.object({ results: z.array(issueOutcomeSchema) });
export type IssueBatchReturn = z.infer<typeof issueBatchReturnSchema>;

// ── direct-issue ─────────────────────────────────────────────────────────────────────────────────
const grantOutcomeSchema = z.enum(['issued', 'rejected', 'failed']);

/** What an admin's grant did for one user. */
export const grantResultSchema = z.object({
  userId: z.string(),
  outcome: grantOutcomeSchema,
  couponId: z.string().optional(),
  reason: reasonSchema.optional(),
});
export type GrantResult = z.infer<typeof grantResultSchema>;

/** An admin's grant: the counts, rejections by code (e.g. { SOLD_OUT: 400 }), and each user's result in order. */
export const directIssueResultSchema = z.object({
  policyId: z.string(),
  requested: z.number().int(),
  issued: z.number().int(),
  rejected: z.number().int(),
  failed: z.number().int(),
  rejectedBy: z.record(z.string(), z.number().int()),
  results: z.array(grantResultSchema),
});
export type DirectIssueResult = z.infer<typeof directIssueResultSchema>;

export const directIssueReturnSchema = outcomeSchema(directIssueResultSchema);
export type DirectIssueReturn = z.infer<typeof directIssueReturnSchema>;

// ── user-event ───────────────────────────────────────────────────────────────────────────────────
/** A user event: what each EVENT policy it triggered did. */
export const userEventResultSchema = z.object({
  eventId: z.string(),
  type: z.string(),
  userId: z.string(),
  policies: z.array(
    z.object({
      policyId: z.string(),
      outcome: grantOutcomeSchema,
      couponId: z.string().optional(),
      reason: reasonSchema.optional(),
    }),
  ),
});
export type UserEventResult = z.infer<typeof userEventResultSchema>;

export const userEventReturnSchema = outcomeSchema(userEventResultSchema);
export type UserEventReturn = z.infer<typeof userEventReturnSchema>;

// ── payment ──────────────────────────────────────────────────────────────────────────────────────
/** A reservation as the API shows it after a cancel, confirm or payment (src/storage/reservation.ts reservationView). */
export const reservationViewSchema = z.object({
  reservationId: z.string(),
  couponId: z.string(),
  orderId: z.string(),
  discountAmount: z.number(),
  expiresAt: z.string(),
  userId: z.string(),
  orderAmount: z.number(),
  status: z.enum(['PENDING', 'CONFIRMED', 'CANCELLED', 'EXPIRED']),
  endedAt: z.string().optional(),
  endReason: z.string().optional(),
  refundedAt: z.string().optional(),
  createdAt: z.string(),
});

const paymentOutcomeSchema = z.enum(['APPLIED', 'IGNORED', 'CONFLICT', 'DUPLICATE']);

/** A payment job's result: what the event did. Every payment event is processed; few are applied. */
export const paymentResultSchema = z.object({
  eventId: z.string(),
  outcome: paymentOutcomeSchema,
  reason: reasonSchema.optional(),
  /** For a DUPLICATE: what the first delivery did. */
  earlier: z.object({ outcome: paymentOutcomeSchema, reason: reasonSchema.optional() }).optional(),
  reservation: reservationViewSchema.optional(),
});
export type PaymentResult = z.infer<typeof paymentResultSchema>;

export const paymentReturnSchema = outcomeSchema(paymentResultSchema);
export type PaymentReturn = z.infer<typeof paymentReturnSchema>;

// A reserve: the reservation made (or the one its Idempotency-Key made before).
export const reservationResultSchema = z.object({
  reservationId: z.string(),
  couponId: z.string(),
  orderId: z.string(),
  discountAmount: z.number(),
  expiresAt: z.string(),
});
export type ReservationResult = z.infer<typeof reservationResultSchema>;

export const reserveReturnSchema = outcomeSchema(reservationResultSchema);
export type ReserveReturn = z.infer<typeof reserveReturnSchema>;

// A cancel or confirm by its owner or an admin: the reservation after it.
export const reservationActionReturnSchema = outcomeSchema(reservationViewSchema);
export type ReservationActionReturn = z.infer<typeof reservationActionReturnSchema>;

// A code generation: what was generated. The codes themselves are never in Redis: the owner's first
// read of the job takes them from Postgres (src/web/routes/jobs.ts).
export const generatedCodesSchema = z.object({
  policyId: z.string(),
  length: z.number().int(),
  prefix: z.string().optional(),
  count: z.number().int(),
});
export type GeneratedCodes = z.infer<typeof generatedCodesSchema>;

export const generateCodesReturnSchema = outcomeSchema(generatedCodesSchema);
export type GenerateCodesReturn = z.infer<typeof generateCodesReturnSchema>;

/** The schema of a job's outcome by its kind (an issue batch's requests are read from their outcome records, src/queues/outcomes.ts). */
export function jobOutcomeSchemaOf(kind: string): z.ZodType<z.infer<typeof jobOutcomeSchema>> {
  switch (kind) {
    case 'direct-issue':
      return directIssueReturnSchema;
    case 'user-event':
      return userEventReturnSchema;
    case 'payment':
      return paymentReturnSchema;
    case 'reserve':
      return reserveReturnSchema;
    case 'cancel':
    case 'confirm':
      return reservationActionReturnSchema;
    case 'generate-codes':
      return generateCodesReturnSchema;
    default:
      return jobOutcomeSchema;
  }
}

export interface IssueAnswer {
  /** Null when the request named no policy (a code that names none). */
  policyId: string | null;
  outcome: 'succeeded' | 'rejected' | 'failed';
  reason?: { code: string; message: string };
}

const answerOf = (
  policyId: string | null,
  outcome: 'succeeded' | 'issued' | 'rejected' | 'failed',
  why?: { code: string; message: string },
): IssueAnswer => ({
  policyId,
  outcome: outcome === 'issued' ? 'succeeded' : outcome,
  ...(why && { reason: why }),
});

/**
 * The answers to the requests a finished issue-queue job carried, read from its stored result (and,
 * for a batch, the requests' policies from its data); nothing for other jobs or results that do not
 * read as their kind's (src/queues/results.ts). A granted or event-issued coupon counts as succeeded.
 * The one reading of these results, for the metrics and the rejection counters alike.
 */
export function issueAnswersOf(job: { name: string; data: unknown }, result: unknown): IssueAnswer[] {
  switch (job.name) {
    case 'issue-batch': {
      const batch = issueBatchReturnSchema.safeParse(result);
      if (!batch.success) return [];
      const requests = (job.data as { requests?: { policyId?: unknown }[] } | null)?.requests ?? [];
      return batch.data.results.map((r, i) => {
        const policyId = requests[i]?.policyId;
        return answerOf(typeof policyId === 'string' ? policyId : null, r.outcome, r.outcome === 'succeeded' ? undefined : r.reason);
      });
    }
    case 'direct-issue': {
      const grant = directIssueReturnSchema.safeParse(result);
      if (!grant.success || grant.data.outcome !== 'succeeded') return [];
      const { policyId, results } = grant.data.result;
      return results.map((r) => answerOf(policyId, r.outcome, r.reason));
    }
    case 'user-event': {
      const event = userEventReturnSchema.safeParse(result);
      if (!event.success || event.data.outcome !== 'succeeded') return [];
      return event.data.result.policies.map((p) => answerOf(p.policyId, p.outcome, p.reason));
    }
    default:
      return [];
  }
}
