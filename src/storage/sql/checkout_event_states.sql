-- checkout_event_states(events jsonb): reads, for many payment events in one round trip, the rows a
-- decision about each needs (src/storage/reservation.ts, then src/domain/checkout-rules.ts decides and
-- apply_checkout_events writes).
--
-- Every lookup is a per-event index probe whose plan does not depend on table statistics: measured
-- in the checkout benchmark, a planner that prices a batch at its guess of 100 events flattened the
-- processed_events lookup into a hash join over the whole table, and with statistics taken while no
-- reservation was PENDING it counted an order's PENDING reservations by reading every PENDING one.
-- - processed_events, orders: a lateral subquery with a LIMIT is never pulled up into a join, so
--   each is one primary-key probe however large the table is or is believed to be.
-- - The PENDING count is taken over the order's reservations (ix_reservations_order), filtered in
--   the aggregate: no partial index on status qualifies, so no plan walks every PENDING row.
--
-- Arguments: events, a JSON array of {key, source, eventId, reservationId, orderId, userId}.
-- Returns one row per event: key; done_outcome, done_reason (its processed_events row, when it was
--   processed already); pending_for_order (the order's PENDING reservations, of the event's user when
--   it names one; counted only when the event names no reservation, else 0); r_id, r_status,
--   r_refunded, r_user, r_order (the reservation it names, else its order's live (PENDING or
--   CONFIRMED) one, else the order's newest; of the event's user when it names one); c_id, c_status,
--   c_expires, c_reservation (that reservation's coupon); restore_on_refund (the coupon's policy);
--   o_user (the owner of the event's order, null when nobody reserved on it).
-- STABLE: reads only.

CREATE OR REPLACE FUNCTION checkout_event_states(events jsonb)
  RETURNS TABLE (key text, done_outcome text, done_reason text, pending_for_order integer,
                 r_id text, r_status text, r_refunded boolean, r_user text, r_order text,
                 c_id text, c_status text, c_expires timestamptz, c_reservation text, restore_on_refund boolean,
                 o_user text)
  LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN QUERY
  SELECT e.key, pe.outcome, pe.reason_code, pending.n,
         r.id, r.status, r.refunded_at IS NOT NULL, r.user_id, r.order_id,
         c.id, c.status, c.expires_at::timestamptz, c.reservation_id, p.restore_on_refund,
         o.user_id
    FROM jsonb_to_recordset(events) AS e(key text, source text, "eventId" text, "reservationId" text, "orderId" text, "userId" text)
    -- One primary-key probe per event: the LIMIT keeps the subquery from becoming a join.
    LEFT JOIN LATERAL (SELECT x.outcome, x.reason_code FROM processed_events x
                        WHERE x.source = e.source AND x.event_id = e."eventId" LIMIT 1) pe ON true
    LEFT JOIN LATERAL (SELECT x.user_id FROM orders x WHERE x.order_id = e."orderId" LIMIT 1) o ON true
    -- The order's PENDING reservations (of the event's user, when it names one), counted only
    -- when the event names no reservation; 0 otherwise. More than one exists only in rows from
    -- before uq_reservations_live_order.
    LEFT JOIN LATERAL (SELECT (count(*) FILTER (WHERE y.status = 'PENDING'
                                                 AND (e."userId" IS NULL OR y.user_id = e."userId")))::integer AS n
                         FROM reservations y
                        WHERE e."reservationId" IS NULL AND y.order_id = e."orderId") pending ON true
    LEFT JOIN LATERAL (
      SELECT x.* FROM reservations x WHERE x.id = e."reservationId"
      UNION ALL
      (SELECT x.* FROM reservations x
        WHERE e."reservationId" IS NULL AND x.order_id = e."orderId" AND (e."userId" IS NULL OR x.user_id = e."userId")
        ORDER BY (x.status IN ('PENDING', 'CONFIRMED')) DESC, (x.status = 'PENDING') DESC, x.created_at DESC LIMIT 1)
    ) r ON true
    LEFT JOIN coupons c ON c.id = r.coupon_id
    LEFT JOIN coupon_policies p ON p.id = c.policy_id;
END $$;
