// The inbox sweep (I11): the bridge writes every event it accepts from Kafka to event_inbox before
// it adds the job and commits the offset. Should Redis lose the job (restarted without its data, a
// failover to a replica that lagged), nothing else would ever apply the event: Kafka has moved on.
// One worker of the fleet at a time walks the rows older than INBOX_REDRIVE_AGE_MS in the order the
// bridge wrote them, deletes those whose event was applied, and adds again, with the same job id and
// data, the job of every other one that Redis does not have. Adding is a no-op for a job that exists,
// and the worker applies an event once (processed_events, unique request ids), so a redrive that
// races a late add or a finished job costs a duplicate run at most, never a second effect.
import type { Redis } from 'ioredis';
import type { Sequelize } from 'sequelize';
import type { Logger } from '../core/logger';
import { redisKeys } from '../core/redis-keys';
import { inboxEventsRedriven } from '../core/metrics';
import { deleteInboxRows, INBOX_SOURCES, oldInboxRows, type InboxRow } from '../storage/inbox';
import type { Queues } from '../queues/connection';
import { addJobs } from '../queues/enqueue';
import { JOB_KINDS } from '../queues/names';
import { withLock, type Locks } from '../core/lock';
import { repeatAfter } from '../core/concurrency';

/** Rows read, judged and written per round trip. */
const BATCH = 1_000;

export interface InboxSweepDeps {
  db: Sequelize;
  queues: Queues;
  locks: Locks;
  log: Logger;
}

export interface InboxSweepReport {
  /** Rows of applied events deleted (their event took effect, or their job completed). */
  deleted: number;
  /** Jobs added again because Redis did not have them. */
  redriven: number;
  /** Old rows whose job is still in Redis (waiting, retrying, or failed for good). */
  inRedis: number;
}

/** One pass over every inbox row older than `minAgeMs`. */
export async function sweepInbox(deps: InboxSweepDeps, minAgeMs: number): Promise<InboxSweepReport> {
  const report: InboxSweepReport = { deleted: 0, redriven: 0, inRedis: 0 };
  let oldest: Date | undefined;
  let after = '0';
  for (;;) {
    const rows = await oldInboxRows(deps.db, after, minAgeMs, BATCH);
    if (rows.length === 0) break;
    after = (rows[rows.length - 1] as InboxRow).seq;
    const applied = rows.filter((r) => r.applied);
    await deleteInboxRows(
      deps.db,
      applied.map((r) => r.seq),
    );
    report.deleted += applied.length;

    const open = rows.filter((r) => !r.applied);
    const { missing, completed } = await jobStates(deps.queues, open);
    // A redelivery of an event whose job had completed inserts its row again and adds nothing (the
    // completed job keeps its id for an hour): the job only completes once the event took effect.
    await deleteInboxRows(
      deps.db,
      completed.map((r) => r.seq),
    );
    report.deleted += completed.length;
    report.inRedis += open.length - missing.length - completed.length;
    if (missing.length > 0) {
      oldest ??= missing[0]?.receivedAt;
      // In seq order: a queue takes the jobs of one order in the order their events came.
      await addJobs(
        deps.queues,
        missing.map((r) => ({ kind: r.jobKind, id: r.jobId, data: r.jobData })),
      );
      for (const r of missing) inboxEventsRedriven.inc({ source: r.source });
      report.redriven += missing.length;
    }
    if (rows.length < BATCH) break;
  }
  if (report.redriven > 0) {
    deps.log.warn({ ...report, oldestReceivedAt: oldest?.toISOString() }, 'inbox: events whose jobs were missing from Redis added again');
  }
  return report;
}

/**
 * The rows whose job Redis does not hold (in any state), and those whose job has completed, by one
 * EXISTS and one ZSCORE of the queue's completed set each, in one pipeline.
 */
async function jobStates(queues: Queues, rows: InboxRow[]): Promise<{ missing: InboxRow[]; completed: InboxRow[] }> {
  if (rows.length === 0) return { missing: [], completed: [] };
  const redis: Redis = queues.connection;
  const pipeline = redis.pipeline();
  for (const r of rows) {
    const queue = queues.get(JOB_KINDS[r.jobKind].queue);
    pipeline.exists(queue.toKey(r.jobId));
    pipeline.zscore(queue.keys.completed as string, r.jobId);
  }
  const answers = (await pipeline.exec()) ?? [];
  const answer = (i: number) => {
    const [error, value] = answers[i] ?? [new Error('no answer'), null];
    if (error) throw error;
    return value;
  };
  const missing: InboxRow[] = [];
  const completed: InboxRow[] = [];
  rows.forEach((r, i) => {
    if (answer(2 * i) === 0) missing.push(r);
    else if (answer(2 * i + 1) !== null) completed.push(r);
  });
  return { missing, completed };
}

/** Sweeps every `everyMs` in one process of the fleet at a time; the first pass at once (a worker starting after an outage). */
export function scheduleInboxSweep(deps: InboxSweepDeps, everyMs: number, minAgeMs: number): () => Promise<void> {
  // Series from 0, so Prometheus's increase() sees the first redrive of each.
  for (const source of INBOX_SOURCES) inboxEventsRedriven.inc({ source }, 0);
  return repeatAfter(
    () =>
      withLock(deps.locks, redisKeys().inboxSweepLock(), Math.max(everyMs * 3, 30_000), () => sweepInbox(deps, minAgeMs), { wait: false }),
    everyMs,
    (error) => deps.log.error({ err: error }, 'inbox sweep failed; retrying on the next tick'),
  );
}
