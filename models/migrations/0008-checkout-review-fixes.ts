// Two corrections to the checkout functions of 0006 and 0007:
// - apply_checkout_events locks the coupon row before it records the event: recording first let two
//   batches that both carried one event (a job run twice) wait on each other's locks in opposite
//   order, and Postgres killed one of them.
// - checkout_event_states narrows an order's reservations to the event's user when it names one, and
//   counts the order's PENDING reservations: an event that names no reservation is applied only
//   when it cannot mean more than one.
import type { Migration } from './types';

export const checkoutReviewFixes: Migration = {
  name: '0008-checkout-review-fixes',
  async up({ context: db }) {
    await db.query(`
      CREATE OR REPLACE FUNCTION apply_checkout_events(events jsonb)
        RETURNS TABLE (key text, outcome text, reservation jsonb) LANGUAGE plpgsql AS $$
      #variable_conflict use_column
      DECLARE
        e jsonb;
        rid text;
        cid text;
        ts timestamptz;
        c_status text;
        c_res text;
        r_status text;
        r_refunded boolean;
        x reservations%ROWTYPE;
      BEGIN
        FOR e IN SELECT v.value FROM jsonb_array_elements(events) WITH ORDINALITY AS v(value, n)
                  ORDER BY v.value->>'couponId' NULLS FIRST, v.n LOOP
          key := e->>'key';
          reservation := NULL;
          rid := e->>'reservationId';
          cid := e->>'couponId';
          ts := (e->>'at')::timestamptz;
          BEGIN
            -- The coupon row first: the lock order of every checkout write.
            IF cid IS NOT NULL THEN
              SELECT status, reservation_id INTO c_status, c_res FROM coupons WHERE id = cid FOR UPDATE;
            END IF;
            INSERT INTO processed_events (source, event_id, type, order_id, reservation_id, outcome, reason_code, detail, processed_at)
            VALUES (e->>'source', e->>'eventId', e->>'type', e->>'orderId', rid, e->>'outcome', e->>'reasonCode', e->>'detail', ts)
            ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
              outcome := 'duplicate';
            ELSE
              IF cid IS NOT NULL THEN
                -- Both rows must be as they were when the decision was made.
                SELECT status, refunded_at IS NOT NULL INTO r_status, r_refunded FROM reservations WHERE id = rid;
                IF c_status IS DISTINCT FROM e->'expect'->>'coupon'
                   OR c_res IS DISTINCT FROM e->'expect'->>'couponReservation'
                   OR r_status IS DISTINCT FROM e->'expect'->>'reservation'
                   OR r_refunded IS DISTINCT FROM (e->'expect'->>'refunded')::boolean THEN
                  RAISE EXCEPTION 'stale' USING ERRCODE = 'CK001';
                END IF;
              END IF;
              CASE e->>'action'
                WHEN 'confirm', 'confirm-late' THEN
                  UPDATE reservations SET status = 'CONFIRMED', ended_at = COALESCE(ended_at, ts), end_reason = e->>'endReason'
                   WHERE id = rid;
                  UPDATE coupons SET status = 'USED', used_at = ts, order_id = e->>'orderId', reservation_id = rid,
                                     reserved_at = COALESCE(reserved_at, ts)
                   WHERE id = cid;
                WHEN 'release' THEN
                  UPDATE reservations SET status = 'CANCELLED', ended_at = ts, end_reason = e->>'endReason' WHERE id = rid;
                  UPDATE coupons SET status = 'ISSUED', reserved_at = NULL, order_id = NULL, reservation_id = NULL
                   WHERE id = cid;
                WHEN 'restore' THEN
                  UPDATE reservations SET refunded_at = ts WHERE id = rid;
                  UPDATE coupons SET status = 'ISSUED', reserved_at = NULL, used_at = NULL, order_id = NULL, reservation_id = NULL
                   WHERE id = cid;
                ELSE
                  NULL; -- recorded, nothing to change
              END CASE;
              outcome := 'done';
            END IF;
            IF rid IS NOT NULL THEN
              SELECT * INTO x FROM reservations WHERE id = rid;
              IF FOUND THEN reservation := to_jsonb(x); END IF;
            END IF;
          EXCEPTION WHEN SQLSTATE 'CK001' THEN
            outcome := 'stale';
          END;
          RETURN NEXT;
        END LOOP;
      END $$;

      DROP FUNCTION checkout_event_states(jsonb);
      -- Each event: {key, source, eventId, reservationId, orderId, userId}.
      CREATE FUNCTION checkout_event_states(events jsonb)
        RETURNS TABLE (key text, done_outcome text, done_reason text, pending_for_order integer,
                       r_id text, r_status text, r_refunded boolean, r_user text, r_order text,
                       c_id text, c_status text, c_expires timestamptz, c_reservation text, restore_on_refund boolean)
        LANGUAGE plpgsql STABLE AS $$
      BEGIN
        RETURN QUERY
        SELECT e.key, pe.outcome, pe.reason_code,
               (SELECT count(*)::integer FROM reservations y
                 WHERE e."reservationId" IS NULL AND y.order_id = e."orderId" AND y.status = 'PENDING'
                   AND (e."userId" IS NULL OR y.user_id = e."userId")),
               r.id, r.status, r.refunded_at IS NOT NULL, r.user_id, r.order_id,
               c.id, c.status, c.expires_at::timestamptz, c.reservation_id, p.restore_on_refund
          FROM jsonb_to_recordset(events) AS e(key text, source text, "eventId" text, "reservationId" text, "orderId" text, "userId" text)
          -- Lateral, so each event is one primary-key probe (a plain join hashes the whole table).
          LEFT JOIN LATERAL (SELECT x.outcome, x.reason_code FROM processed_events x
                              WHERE x.source = e.source AND x.event_id = e."eventId") pe ON true
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
    `);
  },
  async down() {
    throw new Error('0008 replaces functions in place; restore them from 0006 and 0007 by hand');
  },
};
