// Generates a CODE policy's single-use codes: random codes from a CSPRNG, their keyed hashes in
// Postgres, progress reported as it goes, and the codes themselves sealed (encrypted) in the batch's
// row until the job view (GET /jobs/:id) hands them out once to their owner.
import type { Job } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Sequelize } from 'sequelize';
import type { Logger } from '../core/logger';
import { codeHash, generateCodes, sealCodes } from '../domain/codes';
import { discardUnfinishedBatch, dropUnfetchedCodes, finishBatch, insertCodeHashes } from '../storage/codes';
import { CouponPolicy } from '../storage/policy';
import { generateCodesJobSchema, type JobOutcome } from '../queues/jobs';
import type { GeneratedCodes } from '../queues/results';
import { reason } from '../core/errors';
import { jobData } from '../queues/job-data';

/** Codes hashed and inserted per statement; progress is reported after each. */
const CHUNK = 5_000;

/** Why a policy takes no generated codes, or null when it does. */
export function codePolicyRefusal(policy: Pick<CouponPolicy, 'issueMethod' | 'code' | 'status'> | null) {
  if (!policy) return reason('POLICY_NOT_FOUND');
  if (policy.issueMethod !== 'CODE') return reason('METHOD_NOT_SUPPORTED', 'Only a CODE policy has codes.');
  if (policy.code !== null) return reason('METHOD_NOT_SUPPORTED', 'This policy is redeemed with its shared code.');
  if (policy.status === 'ENDED') return reason('POLICY_NOT_ACTIVE', 'The policy has ended.');
  return null;
}

export async function generateCodesJob(
  deps: { db: Sequelize; redis: Redis; codeSecret: string },
  job: Job,
  log: Logger,
): Promise<JobOutcome<GeneratedCodes>> {
  const data = jobData(job, generateCodesJobSchema);
  const jobLog = log.child({ traceId: data.traceId, jobId: job.id, policyId: data.policyId });
  const batchId = String(job.id);
  const refusal = codePolicyRefusal(await CouponPolicy.findByPk(data.policyId, { attributes: ['id', 'issueMethod', 'code', 'status'] }));
  if (refusal) return { outcome: 'rejected', reason: refusal };

  const summary = { policyId: data.policyId, length: data.length, ...(data.prefix && { prefix: data.prefix }) };
  // A rerun of a finished generation (retried by hand, or a second run after a stall) must not
  // replace codes that may be in customers' hands: it answers what the first run made, without codes.
  const earlier = await discardUnfinishedBatch(deps.db, batchId);
  if ('finished' in earlier) {
    jobLog.warn({ count: earlier.finished }, 'code batch already generated; not generating again');
    return { outcome: 'succeeded', result: { ...summary, count: earlier.finished } };
  }
  // An unfinished earlier run never handed its codes out: start over with a fresh set.
  if (earlier.discarded > 0) jobLog.info({ discarded: earlier.discarded }, 'codes of an earlier run discarded');

  const codes: string[] = [];
  const hashesOfCodes: string[] = [];
  await job.updateProgress({ done: 0, total: data.count });
  while (codes.length < data.count) {
    const want = Math.min(CHUNK, data.count - codes.length);
    const fresh = [...new Set(generateCodes(want, data.length, data.prefix ?? ''))];
    const hashes = fresh.map((code) => codeHash(deps.codeSecret, code));
    // A code whose hash exists already (another batch drew it) is skipped and drawn again.
    const stored = await insertCodeHashes(deps.db, data.policyId, batchId, hashes);
    fresh.forEach((code, i) => {
      if (!stored.has(hashes[i]!)) return;
      codes.push(code);
      hashesOfCodes.push(hashes[i]!);
    });
    await job.updateProgress({ done: codes.length, total: data.count });
  }

  // Finished and stored in one transaction: from here on no run discards these codes, and they are
  // in Postgres for their owner's first read. When another run of this job discarded some of ours or
  // finished its own set first, ours are never stored or shown.
  const sealed = sealCodes(deps.codeSecret, batchId, codes);
  if (!(await finishBatch(deps.db, { batchId, policyId: data.policyId, hashes: hashesOfCodes, sealed }))) {
    throw new Error(`code batch ${batchId} was changed or finished by another run of its job`);
  }
  jobLog.info({ count: codes.length }, 'codes generated');
  return { outcome: 'succeeded', result: { ...summary, count: codes.length } };
}

/**
 * Drops, once a minute and at start, the sealed codes of batches nobody fetched within a day
 * (src/storage/codes.ts UNFETCHED_CODES_KEPT_S): codes at rest are kept no longer than they can be read.
 */
export function scheduleUnfetchedCodesDrop({ db, log }: { db: Sequelize; log: Logger }, everyMs = 60_000): () => void {
  const drop = () =>
    dropUnfetchedCodes(db).then(
      (dropped) => {
        if (dropped > 0) log.info({ batches: dropped }, 'unfetched generated codes dropped');
      },
      (error: unknown) => log.warn({ err: error }, 'dropping unfetched generated codes failed; retrying later'),
    );
  void drop();
  const timer = setInterval(() => void drop(), everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
