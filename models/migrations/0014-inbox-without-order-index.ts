// The inbox keeps one index fewer. Every event the bridge accepts is written to event_inbox and
// deleted about 15 s later, so each index costs an insert and a delete per event on the checkout
// path (measured: the inbox took the Postgres CPU of a checkout from 0.61 to 0.92 ms). The order
// index served one query only, a refund that has waited out its attempts asking whether an earlier
// event of its order is still unapplied: a rare question about a table that holds seconds of events,
// which a scan answers.
import type { Migration } from './types';

export const inboxWithoutOrderIndex: Migration = {
  name: '0014-inbox-without-order-index',
  async up({ context: db }) {
    await db.query('DROP INDEX IF EXISTS ix_event_inbox_order');
  },
  async down({ context: db }) {
    await db.query('CREATE INDEX ix_event_inbox_order ON event_inbox (order_id, seq) WHERE order_id IS NOT NULL');
  },
};
