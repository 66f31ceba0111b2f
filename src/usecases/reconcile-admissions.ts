// Gives back stock held by admissions whose job will never write a coupon: the worker died on the
// job's last attempt, or the job was removed. Without this, a crash could lose stock (I3).
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { QueryTypes, type Sequelize } from 'sequelize';
import type { Logger } from '../core/logger';
import { redisKeys } from '../core/redis-keys';
import { findCouponByRequest } from '../storage/coupon';
import { parseRequestId } from '../queues/names';
// An admission without any job is judged past ORPHAN_ADMISSION_AGE_MS, sooner than a job's lock
// periods, so its unit is back while the sale's late requests still wait for one (issue-coupon.ts).
import { ORPHAN_ADMISSION_AGE_MS } from '../queues/outcomes';
import { releaseAdmission, settleAdmission } from '../storage/admission/admission';
import { withAdmissionScripts } from '../storage/admission/scripts';
import { withLock, type Locks } from '../core/lock';

const LIVE_STATES = new Set(['active', 'waiting', 'waiting-children', 'delayed', 'prioritized', 'wait']);

export interface ReconcileDeps {
  db: Sequelize;
  redis: Redis;
  locks: Locks;
  issueQueue: Queue;
  log: Logger;
}

export interface ReconcileReport {
  examined: number;
  settled: number;
  released: number;
  /** Policies whose admission state was dropped: they can admit nobody any more. */
  freed: number;
}

/**
 * How long after its issue window closed a policy keeps its admission state: the window is judged
 * by Redis's clock in admit.lua and by Postgres's here, and the late requests of a sale are refused
 * from the policy's rules either way.
 */
export const ENDED_STATE_GRACE_S = 600;

/**
 * One pass over every policy's pending admissions older than `minAgeMs`, and those whose job does
 * not exist at all once they are older than `orphanAgeMs`.
 */
export async function reconcileAdmissions(
  deps: ReconcileDeps,
  minAgeMs: number,
  orphanAgeMs = Math.min(minAgeMs, ORPHAN_ADMISSION_AGE_MS),
): Promise<ReconcileReport> {
  const report: ReconcileReport = { examined: 0, settled: 0, released: 0, freed: 0 };
  const policyIds = await deps.redis.smembers(redisKeys().admissionPolicies());
  const now = Date.now();
  for (const policyId of policyIds) {
    const pending = redisKeys().admission(policyId).pending;
    let cursor = '0';
    do {
      const [next, flat] = await deps.redis.hscan(pending, cursor, 'COUNT', 500);
      cursor = next;
      for (let i = 0; i + 1 < flat.length; i += 2) {
        const requestId = flat[i] as string;
        const age = now - Number((flat[i + 1] as string).split('|').pop());
        if (age < orphanAgeMs) continue;
        report.examined += 1;
        const verdict = await judge(deps, requestId, age >= minAgeMs);
        if (verdict.kind === 'settle') {
          await settleAdmission(deps.redis, policyId, requestId, verdict.slot);
          report.settled += 1;
        } else if (verdict.kind === 'release') {
          if (await releaseAdmission(deps.redis, policyId, requestId, true)) report.released += 1;
        }
      }
    } while (cursor !== '0');
  }
  if (report.settled + report.released > 0) deps.log.warn({ ...report }, 'reconciled stale admissions');
  report.freed = await freeEndedPolicies(deps, policyIds);
  if (report.freed > 0) deps.log.info({ policies: report.freed }, 'admission state of ended policies dropped');
  return report;
}

/**
 * Drops the admission state (above all the hash of every user ever admitted) of the tracked policies
 * that can admit nobody any more: ENDED, or the issue window closed ENDED_STATE_GRACE_S ago, or gone
 * from Postgres. A policy with admissions still pending keeps its state until they are settled or
 * released (free-ended.lua checks and drops in one step). It leaves the tracked set first: a rebuild
 * meanwhile (its window extended) adds it back, and so does a policy whose state could not be dropped.
 */
export async function freeEndedPolicies(deps: Pick<ReconcileDeps, 'db' | 'redis'>, policyIds: string[]): Promise<number> {
  if (policyIds.length === 0) return 0;
  const open = await deps.db.query<{ id: string }>(
    `SELECT id FROM coupon_policies
      WHERE id = ANY($1::text[]) AND status <> 'ENDED'
        AND (issue_ends_at IS NULL OR issue_ends_at > now() - make_interval(secs => $2))`,
    { bind: [policyIds, ENDED_STATE_GRACE_S], type: QueryTypes.SELECT },
  );
  const stillOpen = new Set(open.map((p) => p.id));
  const redis = withAdmissionScripts(deps.redis);
  let freed = 0;
  for (const policyId of policyIds.filter((id) => !stillOpen.has(id))) {
    await redis.srem(redisKeys().admissionPolicies(), policyId);
    const k = redisKeys().admission(policyId);
    if ((await redis.freeEndedPolicy(k.stock, k.free, k.users, k.pending)) === 1) freed += 1;
    else await redis.sadd(redisKeys().admissionPolicies(), policyId);
  }
  return freed;
}

type Verdict = { kind: 'keep' } | { kind: 'settle'; slot: number | null } | { kind: 'release' };

async function judge(deps: ReconcileDeps, requestId: string, oldEnough: boolean): Promise<Verdict> {
  const job = await deps.issueQueue.getJob(parseRequestId(requestId).jobId);
  if (job) {
    // A job that exists is judged only past two lock periods: its worker may still be writing.
    if (!oldEnough) return { kind: 'keep' };
    const state = await job.getState();
    if (LIVE_STATES.has(state)) return { kind: 'keep' };
  }
  // The job is finished or gone: its coupon either made it to Postgres or never will.
  const coupon = await findCouponByRequest(requestId);
  return coupon ? { kind: 'settle', slot: coupon.slot } : { kind: 'release' };
}

/** Runs the reconciler every `everyMs` in one process of the fleet at a time. */
export function scheduleReconciler(deps: ReconcileDeps, everyMs: number, minAgeMs: number): () => void {
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    withLock(deps.locks, redisKeys().admissionReconcileLock(), everyMs * 3, () => reconcileAdmissions(deps, minAgeMs), { wait: false })
      .catch((error: unknown) => deps.log.error({ err: error }, 'admission reconciler failed'))
      .finally(() => {
        running = false;
      });
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
