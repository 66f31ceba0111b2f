// The operations the API reference documents, one entry per route the app serves (method, path, who
// may call it, the zod schemas of its parameters and body, its answer and its errors); openapi.ts
// builds the OpenAPI document from them. test/openapi.test.ts fails when the app serves a route that
// is not listed here.
import type { z } from 'zod';
import { codeRequestSchema } from '../domain/codes';
import { policyCreateSchema, policyPatchSchema } from '../domain/policy-rules';
import { idSchema } from '../queues/jobs';
import { idempotencyKeySchema } from './idempotency';
import { reserveBody, validateBody } from './routes/checkout';
import { issueBody } from './routes/issue';
import { jobIdParam, waitQuery } from './routes/jobs';
import { directIssueBody, listQuery as policyListQuery } from './routes/policies';
import { overallStatsQuery } from './routes/stats';
import { listQuery as couponListQuery } from './routes/users';

export type Json = Record<string, unknown>;

/** Who may call an operation; openapi.ts words each for the reference. */
export type Who = 'admin' | 'user' | 'self' | 'owner' | 'public' | 'basic';

export interface Op {
  method: 'get' | 'post' | 'patch';
  path: string;
  tag: string;
  summary: string;
  who: Who;
  description?: string;
  params?: Record<string, z.ZodType>;
  query?: z.ZodObject;
  headers?: { name: string; required: boolean; schema: z.ZodType; description: string }[];
  body?: z.ZodType;
  /** A job-creating route: 202 JobAccepted, or 200 JobView with Prefer: wait. */
  job?: boolean;
  ok?: { status: number; description: string; schema?: Json; contentType?: string };
  errors?: number[];
}

export const API = '/api/v1';

export const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });

// A policy read by either audience: the caller's role picks the view (I12).
const policyForCaller = { oneOf: [ref('UserPolicy'), ref('AdminPolicy')], description: 'UserPolicy for a user, AdminPolicy for an admin' };

const id = { id: idSchema };

export const operations: Op[] = [
  {
    method: 'post',
    path: `${API}/coupons/policies`,
    tag: 'Policies',
    summary: 'Create a policy',
    who: 'admin',
    body: policyCreateSchema,
    description:
      'FIRST_COME needs totalQuantity; only a CODE policy has a shared code; an EVENT policy, and only it, has a triggerEvent; issueWindow.endsAt is after startsAt; validity gives until, days or both.',
    ok: { status: 201, description: 'The policy', schema: ref('AdminPolicy') },
    errors: [403, 409],
  },
  {
    method: 'get',
    path: `${API}/coupons/policies`,
    tag: 'Policies',
    summary: 'List policies, newest first',
    who: 'user',
    query: policyListQuery,
    description:
      'An admin sees every policy (filtered by status) as AdminPolicy; a user sees the ACTIVE ones only, as UserPolicy (no shared code, trigger event, refund rule or counters).',
    ok: {
      status: 200,
      description: 'A page',
      schema: {
        type: 'object',
        properties: { data: { type: 'array', items: policyForCaller }, nextCursor: { type: ['string', 'null'] } },
        required: ['data', 'nextCursor'],
      },
    },
  },
  {
    method: 'get',
    path: `${API}/coupons/policies/{id}`,
    tag: 'Policies',
    summary: 'Read a policy',
    who: 'user',
    params: id,
    description:
      'An admin reads any policy as AdminPolicy (with issuedCount and usedCount); a user reads ACTIVE policies only (others are 404), as UserPolicy.',
    ok: { status: 200, description: "The policy in the caller's view", schema: policyForCaller },
    errors: [404],
  },
  {
    method: 'patch',
    path: `${API}/coupons/policies/{id}`,
    tag: 'Policies',
    summary: 'Change a policy',
    who: 'admin',
    params: id,
    body: policyPatchSchema,
    description: 'Pause, resume or end (ENDED is final), extend issueWindow.endsAt, raise totalQuantity, rename.',
    ok: { status: 200, description: 'The policy', schema: ref('AdminPolicy') },
    errors: [403, 404, 409],
  },
  {
    method: 'post',
    path: `${API}/coupons/policies/{id}/codes`,
    tag: 'Policies',
    summary: "Generate a CODE policy's single-use codes",
    who: 'admin',
    params: id,
    body: codeRequestSchema,
    job: true,
    description:
      'The first read of the finished job lists the codes; later reads say codesDelivered: true (codesExpired: true when nobody fetched them within a day; until then they wait encrypted in Postgres). 409 for a policy that is not CODE or has a shared code.',
    errors: [403, 404, 409],
  },
  {
    method: 'post',
    path: `${API}/coupons/policies/{id}/direct-issue`,
    tag: 'Policies',
    summary: 'Grant a DIRECT policy to up to 1,000 users',
    who: 'admin',
    params: id,
    body: directIssueBody,
    job: true,
    description: 'Result: {requested, issued, rejected, failed, rejectedBy, results: [{userId, outcome, couponId?, reason?}]}.',
    errors: [403, 404, 409],
  },
  {
    method: 'get',
    path: `${API}/coupons/policies/{id}/stats`,
    tag: 'Stats',
    summary: "A policy's live statistics",
    who: 'admin',
    params: id,
    description: 'Cached for about a second (longer when computing it took long); asOf says when the numbers were taken.',
    ok: { status: 200, description: 'The statistics', schema: ref('PolicyStats') },
    errors: [403, 404],
  },
  {
    method: 'post',
    path: `${API}/coupons/issue`,
    tag: 'Issue',
    summary: 'Ask for a coupon, by policy id or by code',
    who: 'user',
    job: true,
    // The schema's refinement (exactly one of policyId and code), which JSON Schema cannot take from zod.
    body: issueBody.meta({ oneOf: [{ required: ['policyId'] }, { required: ['code'] }] }),
    headers: [
      {
        name: 'Idempotency-Key',
        required: false,
        schema: idempotencyKeySchema,
        description:
          "Optional, the caller's own for 24 h: a retry with the same key and body answers the first request's job (and, with Prefer: wait, its outcome) instead of USER_LIMIT_REACHED; another body is 409 IDEMPOTENCY_KEY_REUSED.",
      },
    ],
    description:
      'Give either policyId or code. An admin may name userId. During a sale send Prefer: wait=N: the answer is then the final outcome (200), won (the coupon is committed) or lost (final: SOLD_OUT only when no unit can come back), in one round trip. Rejections: POLICY_NOT_FOUND, POLICY_NOT_ACTIVE, METHOD_NOT_SUPPORTED, OUTSIDE_ISSUE_WINDOW, USER_LIMIT_REACHED, SOLD_OUT, CODE_NOT_FOUND, CODE_ALREADY_USED. Wrong codes count against the caller and its address (429 past the budget).',
    errors: [403, 409],
  },
  {
    method: 'post',
    path: `${API}/coupons/validate`,
    tag: 'Checkout',
    summary: 'Whether a coupon is usable for an order, and its discount',
    who: 'owner',
    body: validateBody,
    description: 'A read that changes nothing, with the rules of reserve.',
    ok: { status: 200, description: 'The verdict', schema: ref('Validation') },
    errors: [403, 404],
  },
  {
    method: 'post',
    path: `${API}/coupons/reserve`,
    tag: 'Checkout',
    summary: 'Reserve a coupon for an order',
    who: 'user',
    body: reserveBody,
    job: true,
    headers: [
      {
        name: 'Idempotency-Key',
        required: true,
        schema: idempotencyKeySchema,
        description:
          "The caller's own: the same key and body answer the first 202; another body is 409 IDEMPOTENCY_KEY_REUSED (for good once the key reserved: after Redis forgets the key, Postgres still knows). Use a new key per checkout.",
      },
    ],
    description:
      'Result: {reservationId, couponId, orderId, discountAmount, expiresAt}. An order belongs to the user who first reserved on it and holds one PENDING or CONFIRMED coupon; the same coupon, order and amount again answer the reservation it has. Rejections: COUPON_NOT_FOUND, COUPON_NOT_AVAILABLE, COUPON_EXPIRED, ORDER_AMOUNT_TOO_LOW, ORDER_NOT_OWNED, ORDER_ALREADY_HAS_COUPON, IDEMPOTENCY_KEY_REUSED.',
    errors: [409],
  },
  {
    method: 'post',
    path: `${API}/coupons/reservations/{id}/cancel`,
    tag: 'Checkout',
    summary: 'Cancel a reservation',
    who: 'owner',
    params: id,
    job: true,
    description: 'The coupon goes back to AVAILABLE; RESERVATION_NOT_PENDING once the reservation ended.',
    errors: [403, 404],
  },
  {
    method: 'post',
    path: `${API}/coupons/reservations/{id}/confirm`,
    tag: 'Checkout',
    summary: 'Confirm a reservation (as a PAYMENT_COMPLETED)',
    who: 'admin',
    params: id,
    job: true,
    description: 'For platforms without Kafka.',
    errors: [403, 404],
  },
  {
    method: 'get',
    path: `${API}/coupons/users/{userId}`,
    tag: 'Coupons',
    summary: "A user's coupons, newest first",
    who: 'self',
    params: { userId: idSchema },
    query: couponListQuery,
    ok: {
      status: 200,
      description: 'A page',
      schema: {
        type: 'object',
        properties: { data: { type: 'array', items: ref('Coupon') }, nextCursor: { type: ['string', 'null'] } },
        required: ['data', 'nextCursor'],
      },
    },
    errors: [403],
  },
  {
    method: 'get',
    path: `${API}/coupons/users/{userId}/stats`,
    tag: 'Stats',
    summary: "A user's coupons by status, and what expires within 7 days",
    who: 'self',
    params: { userId: idSchema },
    ok: { status: 200, description: 'The statistics', schema: ref('UserStats') },
    errors: [403],
  },
  {
    method: 'get',
    path: `${API}/jobs/{jobId}`,
    tag: 'Jobs',
    summary: 'What became of a request',
    who: 'owner',
    params: { jobId: jobIdParam },
    query: waitQuery,
    description:
      'waitMs long-polls until the job settles (at most 10 s). Payment jobs: admin only. Results are kept for 24 hours (checkout jobs an hour, a reservation then answered from Postgres).',
    ok: { status: 200, description: 'The job view', schema: ref('JobView') },
    errors: [403, 404],
  },
  {
    method: 'get',
    path: `${API}/stats`,
    tag: 'Stats',
    summary: 'Service totals and the busiest policies',
    who: 'admin',
    query: overallStatsQuery,
    description: 'Cached for about a second (longer when computing it took long).',
    ok: { status: 200, description: 'The statistics', schema: ref('OverallStats') },
    errors: [403],
  },
  {
    method: 'get',
    path: '/health/live',
    tag: 'Operations',
    summary: 'Liveness',
    who: 'public',
    ok: { status: 200, description: '{"status": "ok"}', schema: { type: 'object' } },
  },
  {
    method: 'get',
    path: '/health/ready',
    tag: 'Operations',
    summary: 'Readiness',
    who: 'public',
    description: '503 while Postgres, Redis or the queue does not answer, or while draining.',
    ok: { status: 200, description: '{"status": "ready", "checks": {...}}', schema: { type: 'object' } },
  },
  {
    method: 'get',
    path: '/metrics',
    tag: 'Operations',
    summary: 'Prometheus metrics',
    who: 'public',
    ok: { status: 200, description: 'Prometheus text exposition', contentType: 'text/plain' },
  },
  {
    method: 'get',
    path: '/admin/queues',
    tag: 'Operations',
    summary: 'Bull Board, the queues dashboard',
    who: 'basic',
    ok: { status: 200, description: 'An HTML page', contentType: 'text/html' },
  },
  {
    method: 'get',
    path: '/docs',
    tag: 'Documentation',
    summary: 'This reference as a page',
    who: 'public',
    ok: { status: 200, description: 'An HTML page', contentType: 'text/html' },
  },
  {
    method: 'get',
    path: '/docs/openapi.json',
    tag: 'Documentation',
    summary: 'This reference as OpenAPI 3.1',
    who: 'public',
    ok: { status: 200, description: 'The document', schema: { type: 'object' } },
  },
];
