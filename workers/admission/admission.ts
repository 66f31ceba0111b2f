// The admission step of issuance: Redis decides fast and exactly who gets which stock unit;
// Postgres (models/coupon.ts) refuses anything that would still break I1 or I2.
import { QueryTypes } from 'sequelize';
import type { Redis } from 'ioredis';
import type { ErrorCode } from '../../core/errors';
import { sequelize } from '../../core/postgres';
import { CouponPolicy } from '../../models/policy';
import type { IssueMethod } from '../../models/policy-rules';
import { withLock, type Locks } from '../lock';
import { policyKeys, rebuildLockKey, trackedPoliciesKey } from './keys';
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
  | { kind: 'refused'; code: ErrorCode; total?: number | null };

const REFUSALS: ReadonlySet<string> = new Set([
  'POLICY_NOT_FOUND',
  'POLICY_NOT_ACTIVE',
  'METHOD_NOT_SUPPORTED',
  'OUTSIDE_ISSUE_WINDOW',
  'USER_LIMIT_REACHED',
  'SOLD_OUT',
]);

export interface AdmissionDeps {
  redis: Redis;
  locks: Locks;
}

/** Admits (or refuses) one issue request; a retried request gets its own slot back. */
export async function admit(
  deps: AdmissionDeps,
  req: { policyId: string; requestId: string; userId: string; methods: readonly IssueMethod[] },
): Promise<Admission> {
  const redis = withAdmissionScripts(deps.redis);
  const k = policyKeys(req.policyId);
  for (let round = 0; round < 3; round += 1) {
    const [status, slot, validUntil, validDays, resumed, total, admitted] = await redis.admitCoupon(
      k.meta, k.stock, k.free, k.users, k.pending, req.requestId, req.userId, req.methods.join(','),
    );
    if (status === 'ADMITTED') {
      return {
        kind: 'admitted',
        slot: slot > 0 ? slot : null,
        resumed: resumed === 1,
        validUntil: validUntil ? new Date(Number(validUntil)) : null,
        validDays: validDays ? Number(validDays) : null,
        total: total ? Number(total) : null,
        admitted: admitted ? Number(admitted) : null,
      };
    }
    if (status === 'META_MISSING') await once(`meta:${req.policyId}`, () => loadPolicyMeta(redis, req.policyId));
    else if (status === 'STOCK_MISSING') await once(`stock:${req.policyId}`, () => rebuildStock(deps, req.policyId));
    else if (REFUSALS.has(status)) return { kind: 'refused', code: status as ErrorCode, ...(total && { total: Number(total) }) };
    else throw new Error(`admission script answered ${status}`);
  }
  throw new Error(`admission state of policy ${req.policyId} could not be loaded`);
}

const inFlight = new Map<string, Promise<void>>();

/** Runs fn once per key at a time in this process: a burst of jobs for a cold policy makes one load, not hundreds. */
function once(key: string, fn: () => Promise<void>): Promise<void> {
  let running = inFlight.get(key);
  if (!running) {
    running = fn().finally(() => inFlight.delete(key));
    inFlight.set(key, running);
  }
  return running;
}

/**
 * The coupon row of the request is committed (holding `couponSlot`): close its pending admission,
 * giving back any other slot a later run of the same request was admitted with.
 */
export async function settleAdmission(redisClient: Redis, policyId: string, requestId: string, couponSlot: number | null): Promise<void> {
  const k = policyKeys(policyId);
  await withAdmissionScripts(redisClient).settleCoupon(k.stock, k.free, k.users, k.pending, requestId, String(couponSlot ?? 0));
}

/** Undoes an admission whose coupon will never be written; `returnSlot` false when Postgres holds the slot. */
export async function releaseAdmission(redisClient: Redis, policyId: string, requestId: string, returnSlot: boolean): Promise<boolean> {
  const k = policyKeys(policyId);
  const undone = await withAdmissionScripts(redisClient).releaseCoupon(k.stock, k.free, k.users, k.pending, requestId, returnSlot ? '1' : '0');
  return undone === 1;
}

function metaFields(p: CouponPolicy): string[] {
  return [
    'status', p.status,
    'method', p.issueMethod,
    'startsAt', String(p.issueStartsAt.getTime()),
    'endsAt', p.issueEndsAt ? String(p.issueEndsAt.getTime()) : '',
    'total', p.totalQuantity === null ? '' : String(p.totalQuantity),
    'perUser', String(p.perUserLimit),
    'validUntil', p.validUntil ? String(p.validUntil.getTime()) : '',
    'validDays', p.validDays === null ? '' : String(p.validDays),
  ];
}

/** Publishes a policy's current rules to the admission step. Called after every policy write. */
export async function writePolicyMeta(redisClient: Redis, policy: CouponPolicy): Promise<void> {
  const redis = withAdmissionScripts(redisClient);
  await redis.setPolicyMeta(policyKeys(policy.id).meta, String(policy.version), String(META_TTL_MS), ...metaFields(policy));
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
  const k = policyKeys(policyId);
  await redisClient.multi().hsetnx(k.stock, 'next', 1).hsetnx(k.stock, 'issued', 0).sadd(trackedPoliciesKey(), policyId).exec();
}

async function loadPolicyMeta(redis: AdmissionRedis, policyId: string): Promise<void> {
  const policy = await CouponPolicy.findByPk(policyId);
  if (policy) {
    await writePolicyMeta(redis, policy);
  } else {
    // Remember the miss briefly, so a flood of requests for a bad id does not reach Postgres.
    await redis.setPolicyMeta(policyKeys(policyId).meta, '0', String(MISSING_META_TTL_MS), 'status', 'MISSING');
  }
}

/**
 * Rebuilds a policy's stock, free slots and per-user counts from the committed coupons: on first
 * use of a policy, and after Redis lost its data. One process does it; the others wait for it.
 */
export async function rebuildStock(deps: AdmissionDeps, policyId: string): Promise<void> {
  const k = policyKeys(policyId);
  await withLock(deps.locks, rebuildLockKey(policyId), REBUILD_LOCK_TTL_MS, async () => {
    if ((await deps.redis.exists(k.stock)) === 1) return; // another process finished it meanwhile
    const db = sequelize();
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
    tx.sadd(trackedPoliciesKey(), policyId);
    await tx.exec();
  });
}

/** Counters for operators and tests: what the admission step believes. */
export async function admissionSnapshot(redisClient: Redis, policyId: string) {
  const k = policyKeys(policyId);
  const [stock, free, pending] = await Promise.all([
    redisClient.hgetall(k.stock),
    redisClient.llen(k.free),
    redisClient.hlen(k.pending),
  ]);
  return { next: Number(stock.next ?? 0), issued: Number(stock.issued ?? 0), freeSlots: free, pending };
}
