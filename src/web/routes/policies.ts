// Policy administration: create, read, list, and change (pause, resume, end, extend, raise quantity).
// Reads answer each audience its own view (src/storage/policy-views.ts): a user never sees a shared code,
// a trigger event or the counters.
import { randomUUID } from 'node:crypto';
import { Hono, type Context } from 'hono';
import { z } from 'zod';
import { UniqueConstraintError } from 'sequelize';
import type { Redis } from 'ioredis';
import { AppError } from '../../core/errors';
import { sequelize } from '../../core/postgres';
import { codeRequestSchema } from '../../domain/codes';
import { decodeCursor } from '../../storage/cursor';
import { announcePolicyChange } from '../../storage/cache/policy-cache';
import { CouponPolicy, countCoupons, listPolicies, policyRowFromCreate, policyRules, findPolicyForUpdate } from '../../storage/policy';
import { adminPolicyView, policyViewFor } from '../../storage/policy-views';
import { planPolicyChange, policyCreateSchema, policyPatchSchema, POLICY_STATUSES } from '../../domain/policy-rules';
import type { Queues } from '../../queues/connection';
import { addJob } from '../../queues/enqueue';
import { idSchema, MAX_DIRECT_ISSUE_USERS } from '../../queues/jobs';
import { newJobId } from '../../queues/names';
import { codePolicyRefusal } from '../../usecases/generate-codes';
import { openStock, writePolicyMeta } from '../../storage/admission/admission';
import type { AppEnv } from '../context';
import { requireAdmin } from '../middleware/auth';
import { logWith } from '../middleware/trace';
import { jsonBody, parseWith, query } from '../validation';
import { answerJob } from './jobs';

export const listQuery = z.object({
  status: z.enum(POLICY_STATUSES).optional(),
  limit: z.coerce.number().int().min(1).max(100).default(20),
  cursor: z.string().max(512).optional(),
});
const idParam = idSchema;
export const directIssueBody = z.object({ userIds: z.array(idSchema).min(1).max(MAX_DIRECT_ISSUE_USERS) }).strict();

export function policyRoutes(redis: Redis, queues: Queues) {
  const app = new Hono<AppEnv>();
  app.post('/', requireAdmin, (c) => createPolicy(c, redis));
  app.get('/', listPolicyPage);
  app.get('/:id', readPolicy);
  app.patch('/:id', requireAdmin, (c) => changePolicy(c, redis));
  app.post('/:id/codes', requireAdmin, (c) => generateCodes(c, queues));
  app.post('/:id/direct-issue', requireAdmin, (c) => grantDirect(c, queues));
  return app;
}

// The admission step reads policies from Redis, and every process keeps the code and trigger
// lookups in memory: both hear of the change at once. A failed publish is bounded by the caches' TTL.
async function publish(redis: Redis, policy: CouponPolicy, log: AppEnv['Variables']['log']) {
  await writePolicyMeta(redis, policy).catch((error: unknown) => log.warn({ err: error, policyId: policy.id }, 'policy cache not updated'));
  await announcePolicyChange(redis, policy.id).catch((error: unknown) =>
    log.warn({ err: error, policyId: policy.id }, 'policy change not announced'),
  );
}

async function createPolicy(c: Context<AppEnv>, redis: Redis) {
  const input = await jsonBody(c, policyCreateSchema);
  let policy: CouponPolicy;
  try {
    policy = await CouponPolicy.create(policyRowFromCreate(randomUUID(), input));
  } catch (error) {
    if (error instanceof UniqueConstraintError) throw new AppError('CONFLICT', 'Another policy already has this code.');
    throw error;
  }
  await publish(redis, policy, c.get('log'));
  await openStock(redis, policy.id).catch((error: unknown) =>
    c.get('log').warn({ err: error, policyId: policy.id }, 'admission state not opened; workers will build it'),
  );
  c.get('log').info({ policyId: policy.id, issueMethod: policy.issueMethod }, 'policy created');
  return c.json(adminPolicyView(policy), 201);
}

async function listPolicyPage(c: Context<AppEnv>) {
  const q = query(c, listQuery);
  const audience = c.get('user').role === 'admin' ? 'admin' : 'user';
  // Users see the ACTIVE catalogue only, whatever they ask for.
  const status = audience === 'admin' ? q.status : 'ACTIVE';
  const cursor = q.cursor === undefined ? undefined : decodeCursor(q.cursor);
  if (cursor === null) throw new AppError('VALIDATION_FAILED', 'The cursor is not valid.');
  const page = await listPolicies({ status, limit: q.limit, cursor });
  const counts = await countCoupons(
    sequelize(),
    page.rows.map((p) => p.id),
  );
  return c.json({ data: page.rows.map((p) => policyViewFor(audience, p, counts.get(p.id))), nextCursor: page.nextCursor });
}

async function readPolicy(c: Context<AppEnv>) {
  const id = parseWith(idParam, c.req.param('id'));
  const policy = await CouponPolicy.findByPk(id);
  const audience = c.get('user').role === 'admin' ? 'admin' : 'user';
  if (!policy || (audience !== 'admin' && policy.status !== 'ACTIVE')) throw new AppError('NOT_FOUND', 'No such coupon policy.');
  const counts = await countCoupons(sequelize(), [id]);
  return c.json(policyViewFor(audience, policy, counts.get(id)));
}

async function changePolicy(c: Context<AppEnv>, redis: Redis) {
  const id = parseWith(idParam, c.req.param('id'));
  const patch = await jsonBody(c, policyPatchSchema);
  const policy = await sequelize().transaction(async (tx) => {
    const current = await findPolicyForUpdate(id, tx);
    if (!current) throw new AppError('NOT_FOUND', 'No such coupon policy.');
    const changes = planPolicyChange(policyRules(current), patch);
    await current.update(changes, { transaction: tx });
    return current.reload({ transaction: tx });
  });
  await publish(redis, policy, c.get('log'));
  c.get('log').info({ policyId: id, changes: Object.keys(patch), version: policy.version }, 'policy changed');
  const counts = await countCoupons(sequelize(), [id]);
  return c.json(adminPolicyView(policy, counts.get(id)));
}

/** Single-use codes of a CODE policy, generated by a job; its first finished read lists the codes. */
async function generateCodes(c: Context<AppEnv>, queues: Queues) {
  const id = parseWith(idParam, c.req.param('id'));
  const input = await jsonBody(c, codeRequestSchema);
  const refusal = codePolicyRefusal(await CouponPolicy.findByPk(id, { attributes: ['id', 'issueMethod', 'code', 'status'] }));
  if (refusal?.code === 'POLICY_NOT_FOUND') throw new AppError('NOT_FOUND', 'No such coupon policy.');
  if (refusal) throw new AppError('CONFLICT', refusal.message);
  const user = c.get('user');
  const jobId = newJobId('generate-codes', randomUUID());
  const added = await addJob(
    queues,
    'generate-codes',
    { ...input, policyId: id, userId: user.id, traceId: c.get('traceId'), requestedAt: new Date().toISOString() },
    jobId,
  );
  logWith(c, { enqueued: 'generate-codes', jobId, policyId: id, count: input.count });
  return answerJob(c, queues, jobId, { added });
}

/** A DIRECT policy granted to up to 1,000 users by one job, with a result per user. */
async function grantDirect(c: Context<AppEnv>, queues: Queues) {
  const id = parseWith(idParam, c.req.param('id'));
  const { userIds } = await jsonBody(c, directIssueBody);
  const policy = await CouponPolicy.findByPk(id, { attributes: ['id', 'issueMethod'] });
  if (!policy) throw new AppError('NOT_FOUND', 'No such coupon policy.');
  if (policy.issueMethod !== 'DIRECT') throw new AppError('CONFLICT', 'Only a DIRECT policy is granted this way.');
  const user = c.get('user');
  const jobId = newJobId('direct-issue', randomUUID());
  const added = await addJob(
    queues,
    'direct-issue',
    { policyId: id, userIds, userId: user.id, traceId: c.get('traceId'), requestedAt: new Date().toISOString() },
    jobId,
  );
  logWith(c, { enqueued: 'direct-issue', jobId, policyId: id, users: userIds.length });
  return answerJob(c, queues, jobId, { added });
}
