// The event inbox (table event_inbox): the bridge's durable copy of every event it accepted from Kafka,
// kept until the event has been applied, so a job Redis lost can be added again (I11).
import { QueryTypes, type Sequelize } from 'sequelize';
import { config } from '../core/config';
import type { JobKind } from '../queues/names';

/** Where an event came from: processed_events.source for payments, so the two tables join on the key. */
export const INBOX_SOURCES = ['payments', 'user-events'] as const;
export type InboxSource = (typeof INBOX_SOURCES)[number];

export interface InboxEntry {
  source: InboxSource;
  eventId: string;
  job: { kind: JobKind; id: string; data: object };
  /** A payment's order (ordering of redrives and refunds); null for user events. */
  orderId: string | null;
}

/**
 * Writes the events of one Kafka batch in one statement. An event already there (a redelivery) is
 * left as it is: its row still says everything a redrive needs.
 */
export async function writeInbox(db: Sequelize, entries: InboxEntry[]): Promise<void> {
  if (entries.length === 0) return;
  const prefix = config().QUEUE_PREFIX;
  // One array per column (unnest keeps them in step and in order): cheaper for Postgres than
  // taking a JSON document of the batch apart row by row.
  const column = <T>(pick: (e: InboxEntry) => T) => entries.map(pick);
  // WITH ORDINALITY keeps the batch's order in seq: the order of the partition's events.
  await db.query(
    `INSERT INTO event_inbox (source, event_id, queue_prefix, job_kind, job_id, job_data, order_id)
     SELECT x.source, x.event_id, $1, x.job_kind, x.job_id, x.job_data::jsonb, x.order_id
       FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY
            AS x(source, event_id, job_kind, job_id, job_data, order_id, n)
      ORDER BY x.n
     ON CONFLICT (source, event_id) DO NOTHING`,
    {
      bind: [
        prefix,
        column((e) => e.source),
        column((e) => e.eventId),
        column((e) => e.job.kind),
        column((e) => e.job.id),
        column((e) => JSON.stringify(e.job.data)),
        column((e) => e.orderId),
      ],
      type: QueryTypes.INSERT,
    },
  );
}

export interface InboxRow {
  seq: string;
  source: InboxSource;
  eventId: string;
  jobKind: JobKind;
  jobId: string;
  jobData: object;
  receivedAt: Date;
  /** Its event has taken effect (payments: processed_events has it). */
  applied: boolean;
}

/**
 * Up to `limit` rows of this deployment (QUEUE_PREFIX) after `afterSeq` (in seq order) received
 * more than `olderThanMs` ago, each with whether its event was applied. A user event's row is deleted when it is applied, so one that is
 * here is not.
 */
export async function oldInboxRows(db: Sequelize, afterSeq: string, olderThanMs: number, limit: number): Promise<InboxRow[]> {
  const rows = await db.query<{
    seq: string;
    source: InboxSource;
    event_id: string;
    job_kind: JobKind;
    job_id: string;
    job_data: object;
    received_at: Date;
    applied: boolean;
  }>(
    // An applied row is only deleted: its job's data is not read.
    `SELECT o.seq, o.source, o.event_id, o.job_kind, o.job_id, o.received_at, o.applied,
            CASE WHEN o.applied THEN NULL ELSE (SELECT d.job_data FROM event_inbox d WHERE d.seq = o.seq) END AS job_data
       FROM (SELECT i.seq, i.source, i.event_id, i.job_kind, i.job_id, i.received_at,
                    EXISTS (SELECT 1 FROM processed_events p WHERE p.source = i.source AND p.event_id = i.event_id) AS applied
               FROM event_inbox i
              WHERE i.seq > $1 AND i.queue_prefix = $4 AND i.received_at < now() - make_interval(secs => $2::double precision / 1000)
              ORDER BY i.seq
              LIMIT $3) o
      ORDER BY o.seq`,
    { bind: [afterSeq, olderThanMs, limit, config().QUEUE_PREFIX], type: QueryTypes.SELECT },
  );
  return rows.map((r) => ({
    seq: String(r.seq),
    source: r.source,
    eventId: r.event_id,
    jobKind: r.job_kind,
    jobId: r.job_id,
    jobData: r.job_data,
    receivedAt: new Date(r.received_at),
    applied: r.applied,
  }));
}

/** Deletes rows by seq (applied events): what retention there is. */
export async function deleteInboxRows(db: Sequelize, seqs: string[]): Promise<void> {
  if (seqs.length === 0) return;
  await db.query('DELETE FROM event_inbox WHERE seq = ANY($1::bigint[])', { bind: [seqs], type: QueryTypes.DELETE });
}

/** An event without a processed_events row of its own is marked applied by deleting its row. */
export async function markInboxApplied(db: Sequelize, source: InboxSource, eventId: string): Promise<void> {
  await db.query('DELETE FROM event_inbox WHERE source = $1 AND event_id = $2', {
    bind: [source, eventId],
    type: QueryTypes.DELETE,
  });
}

/**
 * Whether an event of the same order that the bridge accepted before this one (lower seq) has not
 * taken effect yet: its job may be on its way back from a redrive, so a refund keeps waiting for it.
 * False when this event is not in the inbox (accepted before the inbox existed).
 */
export async function earlierPaymentPending(db: Sequelize, eventId: string, orderId: string): Promise<boolean> {
  const [row] = await db.query<{ pending: boolean }>(
    `SELECT EXISTS (
       SELECT 1
         FROM event_inbox me
         JOIN event_inbox e ON e.order_id = me.order_id AND e.seq < me.seq AND e.source = me.source AND e.queue_prefix = me.queue_prefix
        WHERE me.source = 'payments' AND me.event_id = $1 AND me.order_id = $2
          AND NOT EXISTS (SELECT 1 FROM processed_events p WHERE p.source = e.source AND p.event_id = e.event_id)
     ) AS pending`,
    { bind: [eventId, orderId], type: QueryTypes.SELECT },
  );
  return Boolean(row?.pending);
}
