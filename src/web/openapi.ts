// The API reference as an OpenAPI 3.1 document, built from the zod schemas the routes validate with
// (z.toJSONSchema, the input side: what a client sends, before defaults and transforms). Served at
// /docs/openapi.json and rendered at /docs. test/openapi.test.ts fails when the app serves a route
// that is not listed here.
import { z } from 'zod';
import { errorCatalogue } from '../core/errors';
import { codeRequestSchema } from '../domain/codes';
import { policyCreateSchema, policyPatchSchema } from '../domain/policy-rules';
import { policyAdminViewSchema, policyUserViewSchema } from '../storage/policy-views';
import { overallStatsSchema, policyStatsSchema, userStatsSchema } from '../storage/stats';
import { couponViewSchema } from '../domain/coupon-view';
import { idSchema, reasonSchema } from '../queues/jobs';
import { JOB_KINDS, type JobKind } from '../queues/names';
import { idempotencyKeySchema } from './idempotency';
import { reserveBody, validateBody } from './routes/checkout';
import { issueBody } from './routes/issue';
import { jobIdParam, waitQuery } from './routes/jobs';
import { directIssueBody, listQuery as policyListQuery } from './routes/policies';
import { overallStatsQuery } from './routes/stats';
import { listQuery as couponListQuery } from './routes/users';

type Json = Record<string, unknown>;

/** JSON Schema (2020-12, which OpenAPI 3.1 uses) of what a client sends, or of what it receives. */
function jsonSchema(schema: z.ZodType, io: 'input' | 'output' = 'input'): Json {
  const { $schema: _dialect, ...rest } = z.toJSONSchema(schema, { io }) as Json;
  return rest;
}

// The job view calls an issue-batch request an issue.
const jobTypes = (Object.keys(JOB_KINDS) as JobKind[]).map((k) => (k === 'issue-batch' ? 'issue' : k));

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });

// A policy read by either audience: the caller's role picks the view (I12).
const policyForCaller = { oneOf: [ref('UserPolicy'), ref('AdminPolicy')], description: 'UserPolicy for a user, AdminPolicy for an admin' };

export const docShapes = {
  // The schemas that shape the answers (src/storage/policy-views.ts), one per audience.
  AdminPolicy: policyAdminViewSchema,
  UserPolicy: policyUserViewSchema,
  Coupon: couponViewSchema,
  JobAccepted: z.object({
    jobId: z.string(),
    status: z.literal('pending'),
    statusUrl: z.string().describe('GET it (with ?waitMs= to long-poll) for the outcome'),
  }),
  JobView: z.object({
    id: z.string(),
    type: z.enum(jobTypes as [string, ...string[]]),
    status: z
      .enum(['pending', 'succeeded', 'rejected', 'failed'])
      .describe('rejected: a business refusal (never retried); failed: a system fault after retries'),
    result: z
      .unknown()
      .optional()
      .describe('When succeeded: the coupon (issue), the reservation (reserve, cancel, confirm), the grant or code-generation summary'),
    reason: reasonSchema.optional().describe('When rejected or failed: a code of the catalogue (see Error) and a message'),
    createdAt: z.string(),
    finishedAt: z.string().optional(),
    progress: z.object({ done: z.number().int(), total: z.number().int() }).optional().describe('While a grant or code generation runs'),
  }),
  Validation: z.object({ usable: z.boolean(), discountAmount: z.number().int(), reason: reasonSchema.optional() }),
  PolicyStats: policyStatsSchema,
  OverallStats: overallStatsSchema,
  UserStats: userStatsSchema,
} as const;

const errorCodes = Object.keys(errorCatalogue) as (keyof typeof errorCatalogue)[];
const errorSchema = z.object({
  error: z.object({
    code: z.enum(errorCodes as [string, ...string[]]),
    message: z.string(),
    details: z.unknown().optional().describe('VALIDATION_FAILED: [{path, message}] per failing field'),
  }),
});
const catalogue = [
  '| code | HTTP | message |',
  '| --- | --- | --- |',
  ...errorCodes.map((code) => `| ${code} | ${errorCatalogue[code].status} | ${errorCatalogue[code].message} |`),
].join('\n');

type Who = 'admin' | 'user' | 'self' | 'owner' | 'public' | 'basic';
const WHO: Record<Who, string> = {
  admin: 'Needs role admin.',
  user: 'Any authenticated user.',
  self: 'The user named in the path, or an admin.',
  owner: 'The owner of the resource, or an admin.',
  public: 'No authentication.',
  basic:
    'HTTP Basic (BULL_BOARD_USER, BULL_BOARD_PASSWORD); mounted only when both are set; on OPS_PORT when that is set. Wrong credentials lock the address out (429) after BULL_BOARD_AUTH_FAILURES.',
};

interface Op {
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

const API = '/api/v1';
const id = { id: idSchema };

const operations: Op[] = [
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
          "The caller's own: the same key and body answer the first 202; another body is 409 IDEMPOTENCY_KEY_REUSED for an hour (or a job rejected IDEMPOTENCY_KEY_REUSED, for good once the key reserved). Use a new key per checkout.",
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

const ERROR_TEXT: Record<number, string> = {
  400: 'VALIDATION_FAILED: details list the failing fields',
  401: 'UNAUTHENTICATED: no valid bearer token',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  409: 'CONFLICT, or IDEMPOTENCY_KEY_REUSED',
  413: 'PAYLOAD_TOO_LARGE (64 KiB)',
  415: 'UNSUPPORTED_MEDIA_TYPE: send application/json',
  429: 'RATE_LIMITED, with Retry-After in seconds',
  503: 'UNAVAILABLE: the request could not be queued; retry',
};

function operation(op: Op): Json {
  const parameters: Json[] = [];
  for (const [name, schema] of Object.entries(op.params ?? {}))
    parameters.push({ name, in: 'path', required: true, schema: jsonSchema(schema) });
  if (op.query) {
    const q = jsonSchema(op.query) as { properties?: Record<string, Json>; required?: string[] };
    for (const [name, schema] of Object.entries(q.properties ?? {})) {
      parameters.push({ name, in: 'query', required: q.required?.includes(name) ?? false, schema });
    }
  }
  for (const h of op.headers ?? [])
    parameters.push({ name: h.name, in: 'header', required: h.required, description: h.description, schema: jsonSchema(h.schema) });
  if (op.job) {
    parameters.push({
      name: 'Prefer',
      in: 'header',
      required: false,
      description: 'wait=N (seconds, at most 10): answer 200 with the finished job view if it finishes within N seconds, else 202.',
      schema: { type: 'string', examples: ['wait=5'] },
    });
  }

  const responses: Json = {};
  if (op.job) {
    responses['202'] = { description: 'Accepted: the job to poll', content: { 'application/json': { schema: ref('JobAccepted') } } };
    responses['200'] = {
      description: 'With Prefer: wait, the job finished in time: its view, with jobId and statusUrl',
      content: { 'application/json': { schema: ref('JobView') } },
    };
  } else if (op.ok) {
    const type = op.ok.contentType ?? 'application/json';
    responses[String(op.ok.status)] = {
      description: op.ok.description,
      content: { [type]: { schema: op.ok.schema ?? { type: 'string' } } },
    };
  }
  const inApi = op.path.startsWith(API);
  const errors = new Set(op.errors ?? []);
  if (inApi) [400, 401, 429].forEach((s) => errors.add(s));
  if (op.body) [413, 415].forEach((s) => errors.add(s));
  if (op.job) errors.add(503);
  for (const status of [...errors].sort()) responses[String(status)] = { $ref: `#/components/responses/E${status}` };

  return {
    tags: [op.tag],
    summary: op.summary,
    description: [WHO[op.who], op.description].filter(Boolean).join(' '),
    operationId: `${op.method}${op.path.replace(/[{}]/g, '').replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) => (c ?? '').toUpperCase())}`,
    ...(parameters.length > 0 && { parameters }),
    ...(op.body && { requestBody: { required: true, content: { 'application/json': { schema: jsonSchema(op.body) } } } }),
    responses,
    security: op.who === 'public' ? [] : op.who === 'basic' ? [{ basicAuth: [] }] : [{ bearerAuth: [] }],
  };
}

/** The operations documented, as (METHOD, OpenAPI path) pairs, with who may call each. */
export const documentedRoutes = () => operations.map((op) => ({ method: op.method.toUpperCase(), path: op.path, who: op.who }));

let built: Json | undefined;

export function openApiDocument(): Json {
  if (built) return built;
  const paths: Record<string, Json> = {};
  for (const op of operations) paths[op.path] = { ...paths[op.path], [op.method]: operation(op) };
  const schemas: Json = { Error: jsonSchema(errorSchema, 'output') };
  for (const [name, schema] of Object.entries(docShapes)) schemas[name] = jsonSchema(schema, 'output');
  const responses: Json = {};
  for (const [status, description] of Object.entries(ERROR_TEXT)) {
    responses[`E${status}`] = { description, content: { 'application/json': { schema: ref('Error') } } };
  }
  built = {
    openapi: '3.1.0',
    info: {
      title: 'Coupon service API',
      version: '1',
      description: [
        'Flash-sale coupons: policies, issue (first come, download, codes, events, direct grants), checkout and live statistics.',
        'Changes go through jobs: a 202 names the job; poll GET /api/v1/jobs/{jobId}?waitMs=5000 for its outcome.',
        'Money is an integer in the smallest currency unit, at most 10^12; times are ISO-8601 with an offset, within 2000-01-01 .. 2099-12-31 (UTC); a paging cursor is opaque: send back the nextCursor you got.',
        '',
        'Every error is {"error": {"code", "message", "details"?}}. Codes (HTTP status for errors of a request; the business refusals are job outcomes):',
        '',
        catalogue,
      ].join('\n'),
    },
    servers: [{ url: '/' }],
    tags: ['Policies', 'Issue', 'Checkout', 'Coupons', 'Jobs', 'Stats', 'Operations', 'Documentation'].map((name) => ({ name })),
    paths,
    components: {
      schemas,
      responses,
      securitySchemes: {
        bearerAuth: {
          type: 'http',
          scheme: 'bearer',
          bearerFormat: 'JWT',
          description:
            'HS256 with JWT_SECRET (any key of its list), or RS256/ES256 from JWT_JWKS_URL; claims sub (user id), role (user | admin), exp, and iss/aud when JWT_ISSUER/JWT_AUDIENCE are set.',
        },
        basicAuth: { type: 'http', scheme: 'basic' },
      },
    },
  };
  return built;
}
