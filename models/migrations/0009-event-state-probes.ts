// checkout_event_states (0006) with lookups whose plans do not depend on table statistics.
//
// Measured in the checkout benchmark: the planner flattened the lateral processed_events lookup into
// a hash join and read the whole table on every call (about 2 ms a call at 15,000 events, growing
// with the table). It prices a batch at its guess of 100 events, for which one pass over the table
// looks cheaper than 100 probes; a worker's batch holds about a dozen. And with statistics taken
// while no reservation was PENDING, it counted an order's PENDING reservations by reading every
// PENDING reservation through the expiry index (80-300 rows a probe during a sale, where the order
// has one or two).
// - processed_events: a lateral subquery with a LIMIT is never pulled up into a join, so each event
//   is one primary-key probe, however large the table is or is believed to be.
// - The PENDING count is taken over the order's reservations (ix_reservations_order), filtered in
//   the aggregate: no partial index on status qualifies, so no plan walks every PENDING row.
//   ix_reservations_pending_order, made for that count, has no reader left and is dropped (one
//   index less to keep on every reservation written).
// The function answers exactly as before.
import type { Migration } from './types';

export const eventStateProbes: Migration = {
  name: '0009-event-state-probes',
  async up({ context: db }) {
    await db.query(`
      CREATE OR REPLACE FUNCTION checkout_event_states(events jsonb)
        RETURNS TABLE (key text, done_outcome text, done_reason text, pending_for_order integer,
                       r_id text, r_status text, r_refunded boolean, r_user text, r_order text,
                       c_id text, c_status text, c_expires timestamptz, c_reservation text, restore_on_refund boolean)
        LANGUAGE plpgsql STABLE AS $$
      BEGIN
        RETURN QUERY
        SELECT e.key, pe.outcome, pe.reason_code, pending.n,
               r.id, r.status, r.refunded_at IS NOT NULL, r.user_id, r.order_id,
               c.id, c.status, c.expires_at::timestamptz, c.reservation_id, p.restore_on_refund
          FROM jsonb_to_recordset(events) AS e(key text, source text, "eventId" text, "reservationId" text, "orderId" text, "userId" text)
          -- One primary-key probe per event: the LIMIT keeps the subquery from becoming a join.
          LEFT JOIN LATERAL (SELECT x.outcome, x.reason_code FROM processed_events x
                              WHERE x.source = e.source AND x.event_id = e."eventId" LIMIT 1) pe ON true
          -- The order's PENDING reservations (of the event's user, when it names one), counted only
          -- when the event names no reservation; 0 otherwise.
          LEFT JOIN LATERAL (SELECT (count(*) FILTER (WHERE y.status = 'PENDING'
                                                       AND (e."userId" IS NULL OR y.user_id = e."userId")))::integer AS n
                               FROM reservations y
                              WHERE e."reservationId" IS NULL AND y.order_id = e."orderId") pending ON true
          LEFT JOIN LATERAL (
            SELECT x.* FROM reservations x WHERE x.id = e."reservationId"
            UNION ALL
            (SELECT x.* FROM reservations x
              WHERE e."reservationId" IS NULL AND x.order_id = e."orderId" AND (e."userId" IS NULL OR x.user_id = e."userId")
              ORDER BY (x.status = 'PENDING') DESC, x.created_at DESC LIMIT 1)
          ) r ON true
          LEFT JOIN coupons c ON c.id = r.coupon_id
          LEFT JOIN coupon_policies p ON p.id = c.policy_id;
      END $$;

      DROP INDEX ix_reservations_pending_order;
    `);
  },
  async down({ context: db }) {
    // The index comes back; the function is deliberately kept, as it answers exactly what the one of
    // 0006 answers (checked on random data, both ways) with plans that do not depend on statistics.
    await db.query(`CREATE INDEX ix_reservations_pending_order ON reservations (order_id) WHERE status = 'PENDING'`);
  },
};
