// The API reference as an OpenAPI 3.1 document, built from the operations of openapi-operations.ts and
// the zod schemas the routes validate with (z.toJSONSchema, the input side: what a client sends, before
// defaults and transforms). Served at /docs/openapi.json and rendered at /docs.
import { z } from 'zod';
import { errorCatalogue } from '../core/errors';
import { couponViewSchema } from '../domain/coupon-view';
import { reasonSchema } from '../queues/jobs';
import { JOB_KINDS, type JobKind } from '../queues/names';
import { policyAdminViewSchema, policyUserViewSchema } from '../storage/policy-views';
import { overallStatsSchema, policyStatsSchema, userStatsSchema } from '../storage/stats';
import { API, operations, ref, type Json, type Op, type Who } from './openapi-operations';

/** JSON Schema (2020-12, which OpenAPI 3.1 uses) of what a client sends, or of what it receives. */
function jsonSchema(schema: z.ZodType, io: 'input' | 'output' = 'input'): Json {
  const { $schema: _dialect, ...rest } = z.toJSONSchema(schema, { io }) as Json;
  return rest;
}

// The job view calls an issue-batch request an issue.
const jobTypes = (Object.keys(JOB_KINDS) as JobKind[]).map((k) => (k === 'issue-batch' ? 'issue' : k));

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

const WHO: Record<Who, string> = {
  admin: 'Needs role admin.',
  user: 'Any authenticated user.',
  self: 'The user named in the path, or an admin.',
  owner: 'The owner of the resource, or an admin.',
  public: 'No authentication.',
  basic:
    'HTTP Basic (BULL_BOARD_USER, BULL_BOARD_PASSWORD); mounted only when both are set; on OPS_PORT when that is set. Wrong credentials lock the address out (429) after BULL_BOARD_AUTH_FAILURES.',
};

const ERROR_TEXT: Record<number, string> = {
  400: 'VALIDATION_FAILED: details list the failing fields',
  401: 'UNAUTHENTICATED: no valid bearer token',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  405: 'METHOD_NOT_ALLOWED: the ops servers of the worker and the bridge answer GET and HEAD only',
  409: 'CONFLICT, or IDEMPOTENCY_KEY_REUSED',
  413: 'PAYLOAD_TOO_LARGE (64 KiB)',
  415: 'UNSUPPORTED_MEDIA_TYPE: send application/json',
  429: 'RATE_LIMITED, with Retry-After in seconds',
  500: 'INTERNAL: a fault of the service; the message says no more',
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
