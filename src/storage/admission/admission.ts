// The admission step of issuance: Redis decides fast and exactly who gets which stock unit;
// Postgres (src/storage/coupon.ts) refuses anything that would still break I1 or I2.
import { QueryTypes, type Sequelize } from 'sequelize';
import type { Redis } from 'ioredis';
import { singleFlight } from '../../core/concurrency';
import type { ErrorCode } from '../../core/errors';
import { redisKeys } from '../../core/redis-keys';
import { CouponPolicy } from '../policy';
import type { IssueMethod } from '../../domain/policy-rules';
import { withLock, type Locks } from '../../core/lock';
import { withAdmissionScripts, type AdmissionRedis } from './scripts';

const META_TTL_MS = 5 * 60_000;
const MISSING_META_TTL_MS = 30_000;
const REBUILD_LOCK_TTL_MS = 60_000;

export type Admission =
  | {
      kind: 'admitted';
      slot: number | null;
      resumed: boolean;
      validUntil: Date | null;
      validDays: number | null;
      /** The policy's quantity (null: unlimited) and its admissions counting this one (null when resumed). */
      total: number | null;
      admitted: number | null;
    }
  | { kind: 'refused'; code: ErrorCode; total?: number | null }
  /** Stock is gone but admissions are pending, so a unit may come back: ask again shortly. */
  | { kind: 'wait' };

const REFUSALS: ReadonlySet<string> = new Set([
  'POLICY_NOT_FOUND',
  'POLICY_NOT_ACTIVE',
  'METHOD_NOT_SUPPORTED',
  'OUTSIDE_ISSUE_WINDOW',
  'USER_LIMIT_REACHED',
  'SOLD_OUT',
]);

export interface AdmissionDeps {
  /** Where the stock is rebuilt from when Redis has none. */
  db: Sequelize;
  redis: Redis;
  locks: Locks;
}

export interface AdmissionRequest {
  requestId: string;
  userId: string;
}

/** What admit.lua answered for one request; `missing` when the policy's state must be loaded first. */
export type AdmissionAnswer = Admission | { kind: 'missing'; what: 'meta' | 'stock' };

/**
 * Runs admit.lua once for any number of requests of one policy. `waitWhenPending`: answer `wait`
 * rather than SOLD_OUT while admissions are pending, so SOLD_OUT is told only when no unit can
 * come back. Loads nothing: a policy whose state is not in Redis answers `missing` for each request.
 */
export async function admitOnce(
  redisClient: Redis,
  policyId: string,
  methods: readonly IssueMethod[],
  requests: readonly AdmissionRequest[],
  waitWhenPending: boolean,
): Promise<AdmissionAnswer[]> {
  const k = redisKeys().admission(policyId);
  const reply = await withAdmissionScripts(redisClient).admitCoupons(
    k.meta,
    k.stock,
    k.free,
    k.users,
    k.pending,
    methods.join(','),
    waitWhenPending ? '1' : '0',
    ...requests.flatMap((r) => [r.requestId, r.userId]),
  );
  const [validUntil, validDays, total] = reply.slice(0, 3).map(String) as [string, string, string];
  return requests.map((_, i): AdmissionAnswer => {
    const [status, slot, resumed, admitted] = reply.slice(3 + i * 4, 7 + i * 4) as [string, number, number, number];
    if (status === 'ADMITTED') {
      return {
        kind: 'admitted',
        slot: slot > 0 ? slot : null,
        resumed: resumed === 1,
        validUntil: validUntil ? new Date(Number(validUntil)) : null,
        validDays: validDays ? Number(validDays) : null,
        total: total ? Number(total) : null,
        admitted: admitted > 0 ? admitted : null,
      };
    }
    if (status === 'WAIT') return { kind: 'wait' };
    if (status === 'META_MISSING') return { kind: 'missing', what: 'meta' };
    if (status === 'STOCK_MISSING') return { kind: 'missing', what: 'stock' };
    if (REFUSALS.has(status)) return { kind: 'refused', code: status as ErrorCode, ...(total && { total: Number(total) }) };
    throw new Error(`admission script answered ${status}`);
  });
}

/**
 * Admits (or refuses) one issue request; a retried request gets its own slot back. Loads the
 * policy's admission state from Postgres when Redis does not have it.
 */
export async function admit(
  deps: AdmissionDeps,
  req: { policyId: string; requestId: string; userId: string; methods: readonly IssueMethod[] },
  waitWhenPending = true,
): Promise<Admission> {
  for (let round = 0; round < 3; round += 1) {
    const [answer] = await admitOnce(deps.redis, req.policyId, req.methods, [req], waitWhenPending);
    if (answer!.kind !== 'missing') return answer!;
    if (answer!.what === 'meta')
      await loads.run(`meta:${req.policyId}`, () => loadPolicyMeta(withAdmissionScripts(deps.redis), req.policyId));
    else await loads.run(`stock:${req.policyId}`, () => rebuildStock(deps, req.policyId));
  }
  throw new Error(`admission state of policy ${req.policyId} could not be loaded`);
}

/** One load per policy and kind at a time in this process: a burst of jobs for a cold policy makes one load, not hundreds. */
const loads = singleFlight<string, void>();

/**
 * The coupon row of the request is committed (holding `couponSlot`): close its pending admission,
 * giving back any other slot a later run of the same request was admitted with.
 */
export async function settleAdmission(redisClient: Redis, policyId: string, requestId: string, couponSlot: number | null): Promise<void> {
  const k = redisKeys().admission(policyId);
  await withAdmissionScripts(redisClient).settleCoupon(k.stock, k.free, k.users, k.pending, requestId, String(couponSlot ?? 0));
}

/** Undoes an admission whose coupon will never be written; `returnSlot` false when Postgres holds the slot. */
export async function releaseAdmission(redisClient: Redis, policyId: string, requestId: string, returnSlot: boolean): Promise<boolean> {
  const k = redisKeys().admission(policyId);
  const undone = await withAdmissionScripts(redisClient).releaseCoupon(
    k.stock,
    k.free,
    k.users,
    k.pending,
    requestId,
    returnSlot ? '1' : '0',
  );
  return undone === 1;
}

function metaFields(p: CouponPolicy): string[] {
  return [
    'status',
    p.status,
    'method',
    p.issueMethod,
    'startsAt',
    String(p.issueStartsAt.getTime()),
    'endsAt',
    p.issueEndsAt ? String(p.issueEndsAt.getTime()) : '',
    'total',
    p.totalQuantity === null ? '' : String(p.totalQuantity),
    'perUser',
    String(p.perUserLimit),
    'validUntil',
    p.validUntil ? String(p.validUntil.getTime()) : '',
    'validDays',
    p.validDays === null ? '' : String(p.validDays),
  ];
}

/** Publishes a policy's current rules to the admission step. Called after every policy write. */
export async function writePolicyMeta(redisClient: Redis, policy: CouponPolicy): Promise<void> {
  const redis = withAdmissionScripts(redisClient);
  await redis.setPolicyMeta(redisKeys().admission(policy.id).meta, String(policy.version), String(META_TTL_MS), ...metaFields(policy));
}

/** Publishes every ACTIVE policy's rules to the admission step, so a sale's first requests find them. */
export async function warmPolicyMeta(redisClient: Redis): Promise<number> {
  const active = await CouponPolicy.findAll({ where: { status: 'ACTIVE' } });
  for (let i = 0; i < active.length; i += 100) await Promise.all(active.slice(i, i + 100).map((p) => writePolicyMeta(redisClient, p)));
  return active.length;
}

/**
 * Opens the admission state of a policy that was just created: with no coupons yet, the state is
 * known without reading Postgres, so the first second of a sale does not queue on a rebuild.
 */
export async function openStock(redisClient: Redis, policyId: string): Promise<void> {
  const k = redisKeys().admission(policyId);
  await redisClient.multi().hsetnx(k.stock, 'next', 1).hsetnx(k.stock, 'issued', 0).sadd(redisKeys().admissionPolicies(), policyId).exec();
}

async function loadPolicyMeta(redis: AdmissionRedis, policyId: string): Promise<void> {
  const policy = await CouponPolicy.findByPk(policyId);
  if (policy) {
    await writePolicyMeta(redis, policy);
  } else {
    // Remember the miss briefly, so a flood of requests for a bad id does not reach Postgres.
    await redis.setPolicyMeta(redisKeys().admission(policyId).meta, '0', String(MISSING_META_TTL_MS), 'status', 'MISSING');
  }
}

/**
 * Rebuilds a policy's stock, free slots and per-user counts from the committed coupons: on first
 * use of a policy, and after Redis lost its data. One process does it; the others wait for it.
 */
export async function rebuildStock(deps: AdmissionDeps, policyId: string): Promise<void> {
  const k = redisKeys().admission(policyId);
  await withLock(deps.locks, redisKeys().admissionRebuildLock(policyId), REBUILD_LOCK_TTL_MS, async () => {
    if ((await deps.redis.exists(k.stock)) === 1) return; // another process finished it meanwhile
    const { db } = deps;
    const [totals] = await db.query<{ issued: string; max_slot: number | null }>(
      'SELECT count(*) AS issued, max(slot) AS max_slot FROM coupons WHERE policy_id = $1',
      { bind: [policyId], type: QueryTypes.SELECT },
    );
    const maxSlot = totals?.max_slot ?? 0;
    const gaps = await db.query<{ slot: number }>(
      `SELECT s AS slot FROM generate_series(1, $2::int) AS s
        WHERE NOT EXISTS (SELECT 1 FROM coupons c WHERE c.policy_id = $1 AND c.slot = s) ORDER BY s`,
      { bind: [policyId, maxSlot], type: QueryTypes.SELECT },
    );
    const holders = await db.query<{ user_id: string; held: string }>(
      'SELECT user_id, count(*) AS held FROM coupons WHERE policy_id = $1 GROUP BY user_id',
      { bind: [policyId], type: QueryTypes.SELECT },
    );
    const tx = deps.redis.multi().del(k.stock, k.free, k.users, k.pending);
    for (let i = 0; i < gaps.length; i += 1000) tx.rpush(k.free, ...gaps.slice(i, i + 1000).map((g) => g.slot));
    for (let i = 0; i < holders.length; i += 1000) {
      tx.hset(k.users, ...holders.slice(i, i + 1000).flatMap((h) => [h.user_id, h.held]));
    }
    tx.hset(k.stock, 'next', maxSlot + 1, 'issued', Number(totals?.issued ?? 0));
    tx.sadd(redisKeys().admissionPolicies(), policyId);
    await tx.exec();
  });
}

/** Counters for operators and tests: what the admission step believes. */
export async function admissionSnapshot(redisClient: Redis, policyId: string) {
  const k = redisKeys().admission(policyId);
  const [stock, free, pending] = await Promise.all([redisClient.hgetall(k.stock), redisClient.llen(k.free), redisClient.hlen(k.pending)]);
  return { next: Number(stock.next ?? 0), issued: Number(stock.issued ?? 0), freeSlots: free, pending };
}
