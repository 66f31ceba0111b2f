// Property-based fuzzing of every route against a real stack (web, worker, Postgres, Redis): generated
// bodies, headers, paths, query strings and cursors, sent as anonymous, user and admin callers. The
// contract: no input gives a 5xx, every error is {"error": {code, message, details?}}, and no answer,
// error or not, carries a stack trace or SQL. The routes and their parameter and body schemas come
// from the OpenAPI document the app serves, so a new route is fuzzed without touching this file.
// The seed is fixed and printed; FUZZ_SEED=<n> replays (or varies) a run, FUZZ_RUNS sets its size.
import fc from 'fast-check';
import { Agent, request } from 'undici';
import { openApiDocument } from '../src/web/openapi';
import { closeDb } from './support/db';
import { policyBody, uniqueId } from './support/fixtures';
import { Api } from './support/http';
import { startStack, type Stack } from './support/stack';
import { adminToken, tokenFor } from './support/tokens';

type Json = Record<string, any>;

const SEED = Number(process.env.FUZZ_SEED ?? 20_261_213);
const RUNS = Number(process.env.FUZZ_RUNS ?? 3000);
/**
 * The test stays under a minute, the stack's start-up included, whatever RUNS says: jest's timeouts
 * hold the start-up (beforeAll) to STARTUP_LIMIT_MS and the fuzzing (the test itself) to FUZZ_LIMIT_MS.
 */
const BUDGET_MS = 55_000;
const STARTUP_LIMIT_MS = 20_000;
const FUZZ_LIMIT_MS = BUDGET_MS - STARTUP_LIMIT_MS;
/**
 * The longest a request may go unanswered before it fails the test: a long-poll answers within 10 s
 * (Prefer: wait and waitMs are capped there). The property stops this long (and a second more) before
 * FUZZ_LIMIT_MS, so the request in flight then is answered, or fails, within the test's limit.
 */
const ANSWER_LIMIT_MS = 12_000;
const BOARD = { user: 'ops', password: 'fuzz-board-password-0123' };

const doc = openApiDocument() as Json;

interface Route {
  method: string;
  path: string;
  params: Json[];
  body?: Json;
}

const routes: Route[] = Object.entries(doc.paths as Record<string, Json>).flatMap(([path, item]) =>
  Object.entries(item as Record<string, Json>).map(([method, op]) => ({
    method: method.toUpperCase(),
    path,
    params: (op.parameters ?? []) as Json[],
    body: op.requestBody?.content?.['application/json']?.schema as Json | undefined,
  })),
);

// ---------------------------------------------------------------------------------------------
// What a bad answer looks like

/** Traces of a stack or of SQL in an answer: frames, source paths, driver and SQL error texts. */
const LEAKS: RegExp[] = [
  /\n\s+at [^\n]+\(?[^\n]+:\d+:\d+\)?/, // a stack frame
  // A path into the service's code (src/<folder>/, or dist/src/<folder>/ as built), or into a dependency.
  /node_modules|\bsrc\/(?:web|worker|bridge|usecases|storage|queues|domain|core|observability)\/|\.ts:\d+/,
  /\b(?:SequelizeDatabaseError|SequelizeValidationError|ReplyError|TypeError|RangeError|SyntaxError: )/,
  /\b(?:SELECT|INSERT INTO|UPDATE|DELETE FROM)\b[^\n]{0,200}\b(?:FROM|VALUES|SET|WHERE)\b/,
  /syntax error at or near|violates [a-z ]*constraint|relation "[^"]+" does not exist|invalid input syntax for|date\/time field value out of range|out of range for type/i,
];

function problemOf(status: number, contentType: string, text: string): string | null {
  if (status >= 500) return `status ${status}`;
  for (const leak of LEAKS) if (leak.test(text)) return `leaks ${leak}`;
  if (status >= 400) {
    if (!/^application\/json/.test(contentType)) return `error with content-type ${contentType}`;
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      return 'error body is not JSON';
    }
    const error = (body as { error?: Json })?.error;
    const keys = body && typeof body === 'object' ? Object.keys(body) : [];
    if (keys.length !== 1 || !error || typeof error !== 'object') return 'error body is not {"error": {...}}';
    if (typeof error.code !== 'string' || typeof error.message !== 'string') return 'error without code and message';
    if (Object.keys(error).some((k) => !['code', 'message', 'details'].includes(k)))
      return 'error with fields beyond code, message, details';
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Generators

/** Dates a client might send: ordinary ones, the edges of the accepted range, and far outside it. */
const dateEdges = [
  '2026-11-01T00:00:00Z',
  new Date(Date.now() - 60_000).toISOString(),
  new Date(Date.now() + 86_400_000).toISOString(),
  '2000-01-01T00:00:00Z',
  '1999-12-31T23:59:59Z',
  '2099-12-31T23:59:59.999Z',
  '2100-01-01T00:00:00Z',
  '0000-01-01T00:00:00Z',
  '0001-01-01T00:00:00Z',
  '9999-12-31T23:59:59Z',
  '1970-01-01T00:00:00Z',
  '2024-02-29T12:00:00+23:59',
  '2023-02-29T00:00:00Z',
  '+275760-09-13T00:00:00Z',
  '-000001-01-01T00:00:00Z',
  'tomorrow',
  '',
  '2026-13-01T00:00:00Z',
  '2026-11-01T24:00:00Z',
  '2026-11-01',
];
const dates = fc.constantFrom(...dateEdges);

const weirdStrings = fc.constantFrom(
  '',
  ' ',
  'a',
  '..',
  '../../etc/passwd',
  '%',
  '%00',
  '\u0000',
  'x\u0000y',
  '\ud800',
  '😀',
  'null',
  'undefined',
  '-1',
  '0',
  '1e400',
  'NaN',
  "'; DROP TABLE coupons; --",
  '<script>alert(1)</script>',
  'x'.repeat(129),
  'y'.repeat(5000),
  '{}',
  '[]',
  '\\',
  '\r\n',
  'Ａ',
);

const numbers = fc.oneof(
  fc.integer(),
  fc.constantFrom(0, -1, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 53, -(2 ** 53), 1e12, 1e12 + 1, 1e21, 1.5, -0, 1e308),
  fc.double({ noNaN: true }),
);

/** encodeURIComponent, which throws for a lone surrogate: that one is sent as its (invalid) UTF-8 bytes. */
const encode = (value: string) => {
  try {
    return encodeURIComponent(value);
  } catch {
    return '%ED%A0%80';
  }
};

function cursorOf(ids: string[]) {
  return fc
    .tuple(
      fc.oneof({ weight: 4, arbitrary: dates }, { weight: 1, arbitrary: fc.string() }),
      fc.oneof(
        { weight: 4, arbitrary: fc.constantFrom(...ids) },
        { weight: 1, arbitrary: weirdStrings },
        { weight: 1, arbitrary: fc.string() },
      ),
      fc.oneof({ weight: 5, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
    )
    .map(([at, id, asJson]) => Buffer.from(asJson ? JSON.stringify([at, id]) : `${at}|${id}`).toString('base64url'));
}

/** A value for a JSON Schema of the document: mostly near-valid, sometimes anything at all. */
function valueFor(schema: Json, ids: string[], depth = 0): fc.Arbitrary<unknown> {
  const anything = depth > 3 ? fc.constant(null) : fc.oneof(weirdStrings, numbers, fc.jsonValue({ maxDepth: 2 }));
  return fc.oneof({ weight: 15, arbitrary: validish(schema, ids, depth) }, { weight: 1, arbitrary: anything });
}

function validish(schema: Json, ids: string[], depth: number): fc.Arbitrary<unknown> {
  const choices = (schema.anyOf ?? schema.oneOf) as Json[] | undefined;
  if (choices && !schema.type) return fc.oneof(...choices.map((s) => valueFor(s, ids, depth + 1)));
  if (schema.enum)
    return fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom(...(schema.enum as unknown[])) },
      { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
    );
  switch (schema.type) {
    case 'object':
      return objectFor(schema, ids, depth);
    case 'array':
      return fc.array(valueFor(schema.items ?? {}, ids, depth + 1), { maxLength: Math.min(schema.maxItems ?? 5, 5) + 1 });
    case 'integer':
    case 'number':
      return fc.oneof(
        {
          weight: 2,
          arbitrary: fc.constantFrom(
            ...[schema.minimum, schema.maximum, schema.minimum - 1, schema.maximum + 1].filter((n) => Number.isFinite(n)),
          ),
        },
        { weight: 6, arbitrary: fc.integer({ min: schema.minimum ?? -1e6, max: Math.min(schema.maximum ?? 1e6, 1e6) }) },
        { weight: 1, arbitrary: numbers },
      );
    case 'boolean':
      return fc.oneof(fc.boolean(), fc.constantFrom('true', 0, null));
    case 'string':
      if (schema.format === 'date-time') return dates;
      return fc.oneof(
        { weight: 4, arbitrary: fc.constantFrom(...ids) },
        { weight: 4, arbitrary: fc.stringMatching(/^[A-Z][A-Z0-9_]{3,12}$/) },
        { weight: 1, arbitrary: fc.string({ maxLength: 40 }) },
        { weight: 1, arbitrary: weirdStrings },
      );
    default:
      return fc.jsonValue({ maxDepth: 2 });
  }
}

function objectFor(schema: Json, ids: string[], depth: number): fc.Arbitrary<unknown> {
  const props = Object.entries((schema.properties ?? {}) as Record<string, Json>);
  const required = new Set<string>(schema.required ?? []);
  const record: Record<string, fc.Arbitrary<unknown>> = {};
  for (const [name, sub] of props) record[name] = valueFor(sub, ids, depth + 1);
  // Required fields are left out now and then; an unknown field is added now and then.
  const requiredKeys = props.map(([name]) => name).filter((name) => required.has(name));
  return fc
    .tuple(
      fc.record(record, { requiredKeys }),
      fc.option(fc.subarray(requiredKeys, { maxLength: Math.min(1, requiredKeys.length) }), { freq: 6, nil: [] as string[] }),
      fc.option(fc.tuple(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 1 })), { freq: 8 }),
    )
    .map(([value, drop, extra]) => {
      const out: Record<string, unknown> = { ...(value as object) };
      for (const name of drop) delete out[name];
      if (extra) out[extra[0]] = extra[1];
      return out;
    });
}

const rawBodies = fc.oneof(
  fc.constantFrom(
    '{',
    '',
    'null',
    '[]',
    '"x"',
    '{"a":',
    '\u0000',
    '{"__proto__": {"admin": true}}',
    `${'['.repeat(3000)}${']'.repeat(3000)}`,
    `{"x": "${'z'.repeat(70 * 1024)}"}`,
  ),
  fc.string({ maxLength: 200 }),
);

const contentTypes = fc.constantFrom(
  'application/json',
  'application/json; charset=utf-8',
  'application/merge-patch+json',
  'text/plain',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x',
  '',
  'application/json; charset=latin1',
);

/** Header values undici will send: visible Latin-1, no CR/LF. */
const headerText = fc.string({ unit: fc.integer({ min: 0x20, max: 0xff }).map((c) => String.fromCharCode(c)), maxLength: 300 });

const preferValues = fc.constantFrom('wait=1', 'wait=0', 'wait=999999', 'wait=abc', 'respond-async, wait=1', 'wait=-1', 'wait=1.5');
const extraHeaders = fc.record(
  {
    'idempotency-key': fc.oneof(fc.uuid(), headerText, fc.constant('k'.repeat(256))),
    prefer: fc.oneof(preferValues, headerText),
    'x-request-id': fc.oneof(headerText, fc.uuid()),
    'x-forwarded-for': fc.oneof(fc.constantFrom('2001:db8::1', '::ffff:10.0.0.1', '::1', 'garbage', '1.2.3.4, 5.6.7.8'), headerText),
    accept: fc.constantFrom('*/*', 'text/html', 'application/xml', ''),
    origin: fc.constantFrom('https://evil.example', 'null'),
  },
  { requiredKeys: [] },
);

/** Who sends a request: its Authorization header (none for anonymous) and the user id it stands for. */
type Identities = Record<string, { header?: string; id: string }>;

/** One generated request. */
interface Generated {
  route: Route;
  who: string;
  method: string;
  pathValues: unknown[];
  query: Record<string, unknown>;
  extraQuery: string | null;
  body: string | null;
  contentType: string;
  headers: Record<string, string> | null;
}

/** A path parameter: mostly a real id, the caller's own for a userId, sometimes a broken encoding. */
function pathParam(name: string, caller: string, ids: string[]): fc.Arbitrary<string> {
  return fc
    .oneof(
      { weight: 4, arbitrary: fc.constantFrom(...ids).map(encode) },
      // The caller's own id, so the self-only routes get past their ownership check.
      { weight: name === 'userId' ? 8 : 1, arbitrary: fc.constant(encode(caller)) },
      { weight: 2, arbitrary: weirdStrings.map(encode) },
      { weight: 1, arbitrary: fc.constantFrom('%', '%zz', '%E0%A4%A', '%00', '..%2F..%2F', '%2e%2e', '%C0%AF', '%ED%A0%80') },
      { weight: 1, arbitrary: fc.string({ maxLength: 30 }).map(encode) },
    )
    .map((v) => (name === 'jobId' && v === '' ? 'x' : v));
}

/** Requests to `route` as `who`: its path, query and body filled from the route's schemas, now and then something else. */
function requestOf(route: Route, who: string, ids: string[], identities: Identities): fc.Arbitrary<Generated> {
  const caller = identities[who]?.id ?? 'x';
  const pathArbs = [...route.path.matchAll(/\{(\w+)\}/g)].map((m) => pathParam(m[1] as string, caller, ids));
  const queryArbs: Record<string, fc.Arbitrary<unknown>> = {};
  for (const p of route.params.filter((x) => x.in === 'query')) {
    queryArbs[p.name] = p.name === 'cursor' ? fc.oneof(cursorOf([...ids, caller]), weirdStrings) : valueFor(p.schema ?? {}, ids);
  }
  return fc.record({
    route: fc.constant(route),
    who: fc.constant(who),
    method: fc.oneof(
      { weight: 12, arbitrary: fc.constant(route.method) },
      { weight: 1, arbitrary: fc.constantFrom('PUT', 'DELETE', 'OPTIONS', 'PATCH', 'POST', 'GET') },
    ),
    pathValues: fc.tuple(...pathArbs),
    query: fc.record(queryArbs, { requiredKeys: [] }),
    extraQuery: fc.option(fc.constantFrom('&&==', '%', 'a[b]=1', 'limit=1&limit=2', `x=${'q'.repeat(3000)}`, 'cursor='), { freq: 4 }),
    body: route.body
      ? fc.oneof(
          { weight: 5, arbitrary: valueFor(route.body, [...ids, caller]).map((v) => JSON.stringify(v)) },
          { weight: 1, arbitrary: rawBodies },
        )
      : fc.option(rawBodies, { freq: 5 }),
    contentType: fc.oneof({ weight: 8, arbitrary: fc.constant('application/json') }, { weight: 1, arbitrary: contentTypes }),
    headers: fc.option(extraHeaders, { freq: 2 }),
  });
}

/** Requests to every route as every caller (Bull Board's credentials only outside /api). */
function requestsFor(ids: string[], identities: Identities): fc.Arbitrary<Generated> {
  const whos = ['anonymous', 'user', 'admin', 'garbage', 'board', 'boardGuess'];
  return fc.oneof(
    ...routes.flatMap((route) =>
      whos.filter((w) => !w.startsWith('board') || !route.path.startsWith('/api')).map((who) => requestOf(route, who, ids, identities)),
    ),
  );
}

/** The path (its parameters filled in) and query string of a generated request. */
function targetOf(r: Generated): { path: string; query: string } {
  let i = 0;
  const path = r.route.path.replace(/\{\w+\}/g, () => String(r.pathValues[i++]));
  const search = new URLSearchParams(
    Object.entries(r.query).map(([k, v]): [string, string] => [k, typeof v === 'string' ? v : JSON.stringify(v)]),
  ).toString();
  return { path, query: [search, r.extraQuery].filter(Boolean).join('&') };
}

/** Whether undici refused to send a request (an invalid URL or header value): nothing reached the server. */
const refusedToSend = (error: unknown) =>
  error instanceof Error && /invalid|not a valid/i.test(error.message) && !/socket|ECONN/i.test(error.message);

// ---------------------------------------------------------------------------------------------

describe('fuzzing every route', () => {
  let stack: Stack;
  let api: Api;
  // Kept-alive connections, as real clients use them: what one request leaves on its socket is what
  // the next one on it meets (test/keepalive.test.ts has the refused-body cases).
  const newAgent = () => new Agent({ connections: 8, headersTimeout: ANSWER_LIMIT_MS, bodyTimeout: ANSWER_LIMIT_MS });
  let agent = newAgent();
  const identities: Identities = {};
  const ids: string[] = [];

  beforeAll(async () => {
    stack = await startStack({ workers: 1, name: 'fuzz', env: { BULL_BOARD_USER: BOARD.user, BULL_BOARD_PASSWORD: BOARD.password } });
    api = new Api(stack.baseUrl, 4);
    const admin = await adminToken();
    const userId = uniqueId('fuzz-user');
    const user = await tokenFor(userId);
    // Real things to point at, so generated requests reach the queries behind the routes too.
    const policy = await api.post('/api/v1/coupons/policies', admin, policyBody({ totalQuantity: 1000 }));
    const shared = await api.post(
      '/api/v1/coupons/policies',
      admin,
      policyBody({ issueMethod: 'CODE', code: uniqueId('FZ').replace(/-/g, '').slice(0, 12), totalQuantity: 100 }),
    );
    const issued = await api.call('POST', '/api/v1/coupons/issue', {
      token: user,
      body: { policyId: policy.body.id },
      headers: { prefer: 'wait=10' },
    });
    const couponId = issued.body?.result?.id as string;
    const reserved = await api.call('POST', '/api/v1/coupons/reserve', {
      token: user,
      body: { couponId, orderId: uniqueId('o'), orderAmount: 50_000 },
      headers: { prefer: 'wait=10', 'idempotency-key': uniqueId('k') },
    });
    ids.push(
      policy.body.id,
      shared.body.id,
      couponId,
      issued.body.jobId,
      reserved.body.jobId,
      reserved.body?.result?.reservationId ?? 'r',
      userId,
      'admin-1',
      'iss_00000000-0000-0000-0000-000000000000.0',
    );
    identities.anonymous = { id: 'anonymous' };
    identities.user = { header: `Bearer ${user}`, id: userId };
    identities.admin = { header: `Bearer ${admin}`, id: 'admin-1' };
    identities.garbage = { header: 'Bearer a.b.c', id: 'x' };
    identities.board = { header: `Basic ${Buffer.from(`${BOARD.user}:${BOARD.password}`).toString('base64')}`, id: 'ops' };
    identities.boardGuess = { header: `Basic ${Buffer.from(`${BOARD.user}:guess`).toString('base64')}`, id: 'ops' };
  }, STARTUP_LIMIT_MS);

  afterAll(async () => {
    await agent.close();
    await api?.close();
    await stack?.stop();
    await closeDb();
  });

  let sent = 0;
  /** Sends one generated request; a description of what went wrong, or null. */
  const send = async (r: Generated): Promise<string | null> => {
    const { path, query } = targetOf(r);
    const headers: Record<string, string> = { ...(r.headers ?? {}) };
    const auth = identities[r.who]?.header;
    if (auth) headers.authorization = auth;
    const withBody = r.body !== null && r.body !== undefined && !['GET', 'HEAD'].includes(r.method);
    if (withBody && r.contentType) headers['content-type'] = r.contentType;
    const url = `${stack.baseUrl}${path}${query ? `?${query}` : ''}`;
    let res;
    try {
      res = await request(url, {
        method: r.method as 'GET',
        headers,
        body: withBody ? (r.body ?? undefined) : undefined,
        dispatcher: agent,
      });
    } catch (error) {
      // undici refused to send it. undici 7 also takes the idle connection it picked out of its pool
      // for good on such a refusal (the pool reads it as back-pressure, and no drain ever comes):
      // after `connections` of them every request waits in the pool forever, never written. A fresh
      // pool after each refusal.
      if (refusedToSend(error)) {
        const spoiled = agent;
        agent = newAgent();
        await spoiled.close();
        return null;
      }
      throw error;
    }
    const text = await res.body.text();
    sent += 1;
    const problem = problemOf(res.statusCode, String(res.headers['content-type'] ?? ''), text);
    if (!problem) return null;
    return `${problem}: ${r.method} ${path}${query ? `?${query.slice(0, 300)}` : ''} as ${r.who}\n  headers ${JSON.stringify(r.headers)}\n  body ${String(r.body).slice(0, 500)}\n  answer ${res.statusCode} ${text.slice(0, 500)}`;
  };

  it(
    'answers no input with a 5xx, every error in the error shape, nothing with a stack or SQL',
    async () => {
      const started = Date.now();
      console.log(`fuzz: seed ${SEED}, up to ${RUNS} requests (replay: FUZZ_SEED=${SEED} npx jest test/fuzz)`);
      const requests = requestsFor(ids, identities);
      /** The request the property is waiting for, if any. */
      const pending: { answered?: Promise<string | null>; what?: string } = {};
      // What is left of the test's limit, less the last request's answer and a second to conclude.
      const timeLimit = FUZZ_LIMIT_MS - ANSWER_LIMIT_MS - 1_000 - (Date.now() - started);
      await fc.assert(
        fc.asyncProperty(requests, async (r) => {
          pending.answered = send(r);
          pending.what = `${r.method} ${r.route.path} as ${r.who}`;
          const problem = await pending.answered;
          pending.answered = undefined;
          if (problem) throw new Error(problem);
        }),
        { seed: SEED, numRuns: RUNS, interruptAfterTimeLimit: timeLimit, markInterruptAsFailure: false, endOnFailure: true },
      );
      // The time limit stops the property, not the request it was waiting for: that one is answered too,
      // so a request never answered fails the test instead of ending the run quietly.
      if (pending.answered) {
        console.log(`fuzz: time limit reached, waiting for the request in flight (${pending.what})`);
        const problem = await pending.answered;
        if (problem) throw new Error(problem);
      }
      console.log(`fuzz: ${sent} requests answered within the contract`);
      expect(sent).toBeGreaterThan(100);
    },
    FUZZ_LIMIT_MS,
  );
});
