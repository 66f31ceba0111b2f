// I12, property-level views: a user reads no field only an admin may. Walks every route a user may
// read (every GET the API reference lists for a user, plus validate and the job answers of the
// user's own requests) as a user, over the real web and worker, and fails on any admin-only key
// anywhere in any answer, or on the shared code or trigger event anywhere in the text.
import { documentedRoutes } from '../src/web/openapi';
import { errorCatalogue } from '../src/core/errors';
import { ADMIN_ONLY_POLICY_FIELDS, policyAdminViewSchema, policyUserViewSchema } from '../src/storage/policy-views';
import { reserve } from './support/checkout';
import { createPolicy, uniqueId } from './support/fixtures';
import { Api } from './support/http';
import { startStack, type Stack } from './support/stack';
import { adminToken, tokenFor } from './support/tokens';

let stack: Stack;
let api: Api;

beforeAll(async () => {
  stack = await startStack({ workers: 1, name: 'policy-views' });
  api = new Api(stack.baseUrl, 16);
});

afterAll(async () => {
  await api?.close();
  await stack?.stop();
});

/** Keys no user answer may hold: the admin-only policy fields and the coupon rows' internals. */
const FORBIDDEN_KEYS = new Set([
  ...ADMIN_ONLY_POLICY_FIELDS,
  'version',
  'slot',
  'requestId',
  'request_id',
  'codeHash',
  'code_hash',
  'createdBy',
]);
const ERROR_CODES = new Set(Object.keys(errorCatalogue));

/**
 * Every admin-only key in `value`, by JSON path. `code` is also the key of an error or refusal code
 * (`{error: {code}}`, `{reason: {code}}`): there, and only with a value of the catalogue, it is allowed.
 */
function adminOnlyKeys(value: unknown, path = '$', parentKey = ''): string[] {
  if (Array.isArray(value)) return value.flatMap((v, i) => adminOnlyKeys(v, `${path}[${i}]`, parentKey));
  if (value === null || typeof value !== 'object') return [];
  return Object.entries(value).flatMap(([key, v]) => {
    const isErrorCode = key === 'code' && (parentKey === 'reason' || parentKey === 'error') && ERROR_CODES.has(String(v));
    const here = FORBIDDEN_KEYS.has(key) && !isErrorCode ? [`${path}.${key}`] : [];
    return [...here, ...adminOnlyKeys(v, `${path}.${key}`, key)];
  });
}

interface Seen {
  route: string;
  status: number;
  body: unknown;
}

/** The policies a user's walk reads: one per issue method, with the secrets their views must hide. */
interface Policies {
  sharedCode: string;
  trigger: string;
  codePolicy: string;
  eventPolicy: string;
  downloadPolicy: string;
}

async function createViewedPolicies(): Promise<Policies> {
  const sharedCode = `SECRET${uniqueId('x').slice(2, 10).toUpperCase()}`;
  const trigger = `VIEWS_${uniqueId('x').slice(2, 10).toUpperCase()}`;
  const codePolicy = await createPolicy(api, { issueMethod: 'CODE', totalQuantity: 10, code: sharedCode, restoreOnRefund: false });
  const eventPolicy = await createPolicy(api, { issueMethod: 'EVENT', totalQuantity: null, triggerEvent: trigger });
  const downloadPolicy = await createPolicy(api, { issueMethod: 'DOWNLOAD', totalQuantity: null, perUserLimit: 1 });
  return { sharedCode, trigger, codePolicy, eventPolicy, downloadPolicy };
}

/** A user's walk over the API: every answer it reads is kept in `seen`, by its documented route. */
class UserWalk {
  readonly seen: Seen[] = [];

  constructor(readonly token: string) {}

  async read(route: string, method: string, path: string, opts: { body?: unknown; headers?: Record<string, string> } = {}) {
    const reply = await api.call(method, path, { token: this.token, ...opts });
    this.seen.push({ route, status: reply.status, body: reply.body });
    return reply;
  }

  /** The job's final view, read through the job route. */
  async settle(jobId: string) {
    for (;;) {
      const reply = await this.read('GET /api/v1/jobs/{jobId}', 'GET', `/api/v1/jobs/${jobId}?waitMs=5000`);
      if (reply.status !== 200 || reply.body.status !== 'pending') return reply.body;
    }
  }
}

/**
 * The user's own jobs: an issue by shared code, one by policy id, a refusal, a reserve and a cancel
 * (with Prefer: wait too, which answers the job view from the POST).
 */
async function walkOwnJobs(walk: UserWalk, p: Policies): Promise<void> {
  const byCode = await walk.settle(
    (await walk.read('POST /api/v1/coupons/issue', 'POST', '/api/v1/coupons/issue', { body: { code: p.sharedCode } })).body.jobId,
  );
  expect(byCode).toMatchObject({ status: 'succeeded', result: { policyId: p.codePolicy } });
  const waited = await walk.read('POST /api/v1/coupons/issue', 'POST', '/api/v1/coupons/issue', {
    body: { policyId: p.downloadPolicy },
    headers: { prefer: 'wait=10' },
  });
  expect(waited.body).toMatchObject({ status: 'succeeded', result: { policyId: p.downloadPolicy } });
  const refused = await walk.settle(
    (await walk.read('POST /api/v1/coupons/issue', 'POST', '/api/v1/coupons/issue', { body: { code: p.sharedCode } })).body.jobId,
  );
  expect(refused).toMatchObject({ status: 'rejected', reason: { code: 'USER_LIMIT_REACHED' } });
  const couponId = byCode.result.id as string;
  await walk.read('POST /api/v1/coupons/validate', 'POST', '/api/v1/coupons/validate', { body: { couponId, orderAmount: 50_000 } });
  const reserved = await reserve(api, walk.token, { couponId, orderId: uniqueId('order'), orderAmount: 50_000 });
  const reservation = await walk.settle(reserved.body.jobId);
  expect(reservation).toMatchObject({ status: 'succeeded', result: { couponId } });
  const cancel = await walk.read(
    'POST /api/v1/coupons/reservations/{id}/cancel',
    'POST',
    `/api/v1/coupons/reservations/${reservation.result.reservationId}/cancel`,
  );
  await walk.settle(cancel.body.jobId);
}

/** Every GET a user may call. */
async function walkUserGets(walk: UserWalk, userId: string, p: Policies): Promise<void> {
  await walk.read('GET /api/v1/coupons/policies', 'GET', '/api/v1/coupons/policies?limit=100');
  for (const id of [p.codePolicy, p.eventPolicy, p.downloadPolicy]) {
    const one = await walk.read('GET /api/v1/coupons/policies/{id}', 'GET', `/api/v1/coupons/policies/${id}`);
    expect(one.status).toBe(200);
    expect(policyUserViewSchema.strict().safeParse(one.body).success).toBe(true);
  }
  for (const status of ['', '?status=AVAILABLE', '?status=RESERVED', '?status=USED', '?status=EXPIRED']) {
    await walk.read('GET /api/v1/coupons/users/{userId}', 'GET', `/api/v1/coupons/users/${userId}${status}`);
  }
  await walk.read('GET /api/v1/coupons/users/{userId}/stats', 'GET', `/api/v1/coupons/users/${userId}/stats`);
  await walk.read('GET /api/v1/coupons/policies/{id}', 'GET', '/api/v1/coupons/policies/no-such-policy');
}

/** No answer the user read holds an admin-only key, the shared code or the trigger event. */
function expectNothingAdminOnly(seen: Seen[], p: Policies): void {
  for (const s of seen) {
    expect({ route: s.route, adminOnly: adminOnlyKeys(s.body) }).toEqual({ route: s.route, adminOnly: [] });
    const text = JSON.stringify(s.body);
    expect({ route: s.route, hasCode: text.includes(p.sharedCode), hasTrigger: text.includes(p.trigger) }).toEqual({
      route: s.route,
      hasCode: false,
      hasTrigger: false,
    });
  }
  expect(seen.length).toBeGreaterThan(15);
}

/** The walk finds what it looks for: an admin's read of the same policy holds those fields. */
async function expectAdminSeesThem(p: Policies): Promise<void> {
  const admin = await adminToken();
  const asAdmin = await api.get(`/api/v1/coupons/policies/${p.codePolicy}`, admin);
  expect(policyAdminViewSchema.strict().safeParse(asAdmin.body).success).toBe(true);
  expect(adminOnlyKeys(asAdmin.body).sort()).toEqual(['$.code', '$.issuedCount', '$.restoreOnRefund', '$.updatedAt', '$.usedCount']);
  expect(asAdmin.body).toMatchObject({ code: p.sharedCode, issuedCount: 1, restoreOnRefund: false });
  expect((await api.get(`/api/v1/coupons/policies/${p.eventPolicy}`, admin)).body.triggerEvent).toBe(p.trigger);
}

describe('what a user reads', () => {
  it('holds no admin-only field on any user-readable route, in any answer', async () => {
    const userId = uniqueId('viewer');
    const walk = new UserWalk(await tokenFor(userId));
    const policies = await createViewedPolicies();
    await walkOwnJobs(walk, policies);
    await walkUserGets(walk, userId, policies);

    // Every user-readable GET route of the API reference was walked: a new one fails here until it is.
    const userReadable = documentedRoutes().filter(
      (r) => r.method === 'GET' && r.path.startsWith('/api/v1') && ['user', 'self', 'owner'].includes(r.who),
    );
    const walked = new Set(walk.seen.map((s) => s.route));
    expect(userReadable.map((r) => `${r.method} ${r.path}`).filter((r) => !walked.has(r))).toEqual([]);

    // The user's list shows the policies (so the walk saw them), in the user's view.
    const list = walk.seen.find((s) => s.route === 'GET /api/v1/coupons/policies')?.body as { data: { id: string }[] };
    expect(list.data.map((p) => p.id)).toEqual(
      expect.arrayContaining([policies.codePolicy, policies.eventPolicy, policies.downloadPolicy]),
    );

    expectNothingAdminOnly(walk.seen, policies);
    await expectAdminSeesThem(policies);
  });

  it('gives a user the offer: terms, window, validity, status and whether it is sold out', async () => {
    const admin = await adminToken();
    const user = await tokenFor(uniqueId('viewer'));
    const policyId = await createPolicy(api, { issueMethod: 'FIRST_COME', totalQuantity: 1, description: 'one only' });
    const before = await api.get(`/api/v1/coupons/policies/${policyId}`, user);
    expect(Object.keys(before.body).sort()).toEqual([
      'createdAt',
      'description',
      'discount',
      'id',
      'issueMethod',
      'issueWindow',
      'name',
      'perUserLimit',
      'soldOut',
      'status',
      'totalQuantity',
      'validity',
    ]);
    expect(before.body).toMatchObject({ soldOut: false, totalQuantity: 1, description: 'one only' });
    const issued = await api.call('POST', '/api/v1/coupons/issue', { token: user, body: { policyId }, headers: { prefer: 'wait=10' } });
    expect(issued.body.status).toBe('succeeded');
    expect((await api.get(`/api/v1/coupons/policies/${policyId}`, user)).body.soldOut).toBe(true);
    // Raising the quantity clears it.
    await api.patch(`/api/v1/coupons/policies/${policyId}`, admin, { totalQuantity: 2 });
    expect((await api.get(`/api/v1/coupons/policies/${policyId}`, user)).body.soldOut).toBe(false);
  });
});
