// The API reference (/docs, /docs/openapi.json): it lists every route the app serves, it is a
// well-formed OpenAPI 3.1 document, and its request schemas refuse what the routes refuse.
import { createApp } from '../src/web/app';
import { docShapes, documentedRoutes, openApiDocument } from '../src/web/openapi';
import { logger } from '../src/core/logger';
import { createRedis } from '../src/core/redis';
import { policyBody } from './support/fixtures';
import { startTestApp, type TestApp } from './support/app';
import { adminToken, testSecret, tokenFor } from './support/tokens';

type Json = Record<string, any>;

let t: TestApp;
const doc = openApiDocument() as Json;

beforeAll(async () => {
  t = await startTestApp();
});

afterAll(async () => {
  await t?.close();
});

/** Every (METHOD, path) the app answers, in OpenAPI's path syntax; middleware (ALL) is no route. */
function servedRoutes(app: { routes: { method: string; path: string }[] }): string[] {
  const routes = app.routes.filter((r) => r.method !== 'ALL').map((r) => `${r.method} ${r.path.replace(/:(\w+)/g, '{$1}')}`);
  return [...new Set(routes)].sort();
}

/**
 * A JSON Schema check of the keywords the document uses; an unknown keyword fails the test rather
 * than being ignored, so the check never says yes by not looking.
 */
function conforms(schema: Json, value: unknown): boolean {
  const known = new Set([
    'type',
    'properties',
    'required',
    'additionalProperties',
    'enum',
    'const',
    'minimum',
    'maximum',
    'minLength',
    'maxLength',
    'pattern',
    'items',
    'minItems',
    'maxItems',
    'anyOf',
    'oneOf',
    'format',
    'default',
    'description',
    'examples',
    'exclusiveMinimum',
    'exclusiveMaximum',
  ]);
  for (const k of Object.keys(schema)) if (!known.has(k)) throw new Error(`schema keyword ${k} not checked by this test`);
  const types = schema.type === undefined ? null : ([] as string[]).concat(schema.type);
  const typeOf = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'array' : Number.isInteger(v) ? 'integer' : typeof v);
  if (types && !types.some((ty) => ty === typeOf(value) || (ty === 'number' && typeof value === 'number'))) return false;
  if (schema.enum && !schema.enum.includes(value)) return false;
  if ('const' in schema && schema.const !== value) return false;
  if (schema.anyOf && !schema.anyOf.some((s: Json) => conforms(s, value))) return false;
  if (schema.oneOf && schema.oneOf.filter((s: Json) => conforms(s, value)).length !== 1) return false;
  if (typeof value === 'number') {
    if (schema.minimum !== undefined && value < schema.minimum) return false;
    if (schema.maximum !== undefined && value > schema.maximum) return false;
    if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) return false;
    if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) return false;
  }
  if (typeof value === 'string') {
    const length = [...value].length;
    if (schema.minLength !== undefined && length < schema.minLength) return false;
    if (schema.maxLength !== undefined && length > schema.maxLength) return false;
    if (schema.pattern !== undefined && !new RegExp(schema.pattern, 'u').test(value)) return false;
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) return false;
    if (schema.maxItems !== undefined && value.length > schema.maxItems) return false;
    if (schema.items && !value.every((v) => conforms(schema.items, v))) return false;
  }
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const obj = value as Record<string, unknown>;
    if (schema.required && !schema.required.every((k: string) => k in obj)) return false;
    for (const [k, v] of Object.entries(obj)) {
      const sub = schema.properties?.[k];
      if (sub) {
        if (!conforms(sub, v)) return false;
      } else if (schema.additionalProperties === false) return false;
    }
  }
  return true;
}

const bodySchema = (method: string, path: string) => doc.paths[path][method].requestBody.content['application/json'].schema as Json;

describe('the OpenAPI document', () => {
  it('documents every route the app serves, and serves every route it documents', async () => {
    // With Bull Board mounted, so its entry point is among the routes too.
    const redis = createRedis('client');
    try {
      const app = createApp({
        queues: t.queues,
        redis,
        log: logger(),
        jwtSecret: testSecret(),
        codeSecret: 'c'.repeat(40),
        bullBoard: { username: 'ops', password: 'secret-secret-secret' },
      });
      // Bull Board's own assets and the JSON API of its page are its business; its page is documented.
      const served = servedRoutes(app).filter((r) => !r.split(' ')[1]?.startsWith('/admin/queues/'));
      const documented = documentedRoutes()
        .map((r) => `${r.method} ${r.path}`)
        .sort();
      expect(served).toEqual(documented);
      expect(served).toEqual(
        expect.arrayContaining([
          'GET /api/v1/coupons/policies/{id}/stats',
          'GET /api/v1/stats',
          'GET /api/v1/coupons/users/{userId}/stats',
          'GET /docs',
          'GET /docs/openapi.json',
        ]),
      );
    } finally {
      redis.disconnect();
    }
  });

  it('is well-formed: 3.1, unique operation ids, path parameters defined, every $ref resolves, errors with the catalogue', () => {
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.components.securitySchemes.bearerAuth).toMatchObject({ type: 'http', scheme: 'bearer', bearerFormat: 'JWT' });
    const ids = new Set<string>();
    for (const [path, item] of Object.entries(doc.paths as Record<string, Json>)) {
      for (const [method, op] of Object.entries(item as Record<string, Json>)) {
        expect(ids.has(op.operationId)).toBe(false);
        ids.add(op.operationId);
        const inPath = [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]);
        const declared = (op.parameters ?? []).filter((p: Json) => p.in === 'path').map((p: Json) => p.name);
        expect({ path, method, params: declared.sort() }).toEqual({ path, method, params: inPath.sort() });
        expect(Object.keys(op.responses).length).toBeGreaterThan(0);
        if (path.startsWith('/api/v1')) {
          expect(op.security).toEqual([{ bearerAuth: [] }]);
          expect(op.responses['401']).toEqual({ $ref: '#/components/responses/E401' });
        }
      }
    }
    const refs = [...JSON.stringify(doc).matchAll(/"\$ref":"#\/([^"]+)"/g)].map((m) => m[1] as string);
    expect(refs.length).toBeGreaterThan(20);
    for (const r of refs) {
      const target = r.split('/').reduce<any>((node, key) => node?.[key], doc);
      expect({ ref: r, found: target !== undefined }).toEqual({ ref: r, found: true });
    }
    // The job answer, the job view and the error body with every code of the catalogue.
    expect(doc.paths['/api/v1/coupons/issue'].post.responses['202']).toEqual({
      description: expect.any(String),
      content: { 'application/json': { schema: { $ref: '#/components/schemas/JobAccepted' } } },
    });
    expect(doc.components.schemas.JobView.properties.status.enum).toEqual(['pending', 'succeeded', 'rejected', 'failed']);
    expect(doc.components.schemas.Error.properties.error.properties.code.enum).toEqual(
      expect.arrayContaining(['VALIDATION_FAILED', 'SOLD_OUT', 'IDEMPOTENCY_KEY_REUSED', 'RESERVATION_NOT_PENDING']),
    );
    expect(doc.paths['/api/v1/coupons/reserve'].post.parameters).toEqual(
      expect.arrayContaining([expect.objectContaining({ name: 'Idempotency-Key', in: 'header', required: true })]),
    );
  });

  it('is served at /docs/openapi.json and rendered at /docs without a token', async () => {
    const json = await t.call('GET', '/docs/openapi.json');
    expect(json.status).toBe(200);
    expect(json.body).toEqual(JSON.parse(JSON.stringify(doc)));
    const page = await t.call('GET', '/docs');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    for (const path of Object.keys(doc.paths)) expect(page.body).toContain(path);
    expect(page.body).not.toMatch(/<script/i);
  });

  it('request schemas in the document refuse what the routes refuse', async () => {
    const admin = await adminToken();
    const user = await tokenFor('openapi-user');
    // POST /coupons/validate: every refusal is a 400 before any lookup; an accepted body reaches the lookup (404).
    const validate = bodySchema('post', '/api/v1/coupons/validate');
    const validateBodies: unknown[] = [
      { couponId: 'c-1', orderAmount: 1000 },
      { couponId: 'c-1', orderAmount: 0 },
      { couponId: 'c-1' },
      { couponId: 'c-1', orderAmount: -1 },
      { couponId: 'c-1', orderAmount: 1.5 },
      { couponId: 'c-1', orderAmount: '1000' },
      { couponId: 'c-1', orderAmount: 1, extra: true },
      { couponId: 'has space', orderAmount: 1 },
      { couponId: 'x'.repeat(129), orderAmount: 1 },
      { couponId: 'c-1', orderAmount: 1_000_000_000_001 },
    ];
    // Both verdicts occur, so the comparison is not vacuous.
    expect(new Set(validateBodies.map((b) => conforms(validate, b)))).toEqual(new Set([true, false]));
    for (const body of validateBodies) {
      const reply = await t.call('POST', '/api/v1/coupons/validate', { token: user, body });
      expect({ body, status: reply.status === 400 ? 400 : 'accepted' }).toEqual({
        body,
        status: conforms(validate, body) ? 'accepted' : 400,
      });
    }

    // POST /coupons/policies: the schema's checks (not its cross-field rules, which the description states).
    const create = bodySchema('post', '/api/v1/coupons/policies');
    const base = policyBody();
    const policyBodies: unknown[] = [
      base,
      { ...base, totalQuantity: 0 },
      { ...base, perUserLimit: 1001 },
      { ...base, discount: { type: 'FIXED', value: 0 } },
      { ...base, discount: { type: 'CASHBACK', value: 10 } },
      { ...base, issueMethod: 'LOTTERY' },
      { ...base, issueWindow: { startsAt: 'tomorrow' } },
      { ...base, name: '' },
      { ...base, color: 'red' },
      { ...base, totalQuantity: null, issueMethod: 'DOWNLOAD' },
    ];
    expect(new Set(policyBodies.map((b) => conforms(create, b)))).toEqual(new Set([true, false]));
    for (const body of policyBodies) {
      const reply = await t.call('POST', '/api/v1/coupons/policies', { token: admin, body });
      expect({ body, status: reply.status === 400 ? 400 : reply.status }).toEqual({ body, status: conforms(create, body) ? 201 : 400 });
      // A created policy is answered in the documented shape, no field more or less.
      if (reply.status === 201) expect(docShapes.AdminPolicy.strict().safeParse(reply.body).success).toBe(true);
    }

    // A query parameter: GET /coupons/policies?limit=
    const limit = doc.paths['/api/v1/coupons/policies'].get.parameters.find((p: Json) => p.name === 'limit').schema;
    for (const value of [0, 1, 100, 101]) {
      const reply = await t.call('GET', `/api/v1/coupons/policies?limit=${value}`, { token: admin });
      expect({ value, status: reply.status }).toEqual({ value, status: conforms(limit, value) ? 200 : 400 });
    }
  });
});
