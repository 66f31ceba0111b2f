// I11: an event the bridge accepted from Kafka is never lost, even when Redis loses its jobs (a
// restart without its data, a failover to a replica that lagged). The bridge writes every event of a
// Kafka batch here, in one statement, before it adds the jobs and before the offset moves; a row stays
// until its event has been applied, and the worker's inbox sweep adds again the job of any row whose
// job Redis no longer has (workers/inbox-sweep.ts).
//
// A row is applied when: payments: processed_events has (source, event_id), written by the statement
// that applied the event; user events: the worker deleted the row once every request of the event
// was final. The sweep deletes applied payment rows, so the table holds the last seconds of events
// plus whatever has not been applied yet.
import type { Migration } from './types';

export const eventInbox: Migration = {
  name: '0013-event-inbox',
  async up({ context: db }) {
    await db.query(`
      CREATE TABLE event_inbox (
        -- Insertion order: the order of a partition's events, which redrives keep.
        seq         bigint GENERATED ALWAYS AS IDENTITY,
        -- processed_events.source of the event ('payments'), or 'user-events'.
        source      text NOT NULL,
        event_id    text NOT NULL,
        -- The job exactly as the bridge added it: the deployment's queues (QUEUE_PREFIX; each
        -- deployment sweeps its own rows), kind (queues/names.ts JOB_KINDS), id and data.
        queue_prefix text NOT NULL,
        job_kind    text NOT NULL,
        job_id      text NOT NULL,
        job_data    jsonb NOT NULL,
        -- The payment's order: a refund waits while an earlier event of its order is not applied.
        order_id    text,
        received_at timestamptz(3) NOT NULL DEFAULT now(),
        CONSTRAINT pk_event_inbox PRIMARY KEY (seq),
        CONSTRAINT uq_event_inbox_event UNIQUE (source, event_id)
      );
      CREATE INDEX ix_event_inbox_order ON event_inbox (order_id, seq) WHERE order_id IS NOT NULL;
    `);
  },
  async down({ context: db }) {
    await db.query('DROP TABLE event_inbox');
  },
};
