// The checkout writes of many jobs in one round trip each. On a small machine every round trip to
// Postgres costs a context switch or two; seven per job held checkout to ~150 a second. Workers now
// read the rows of all the jobs of one event-loop turn in one query, decide in TypeScript
// (models/checkout-rules.ts), and hand the decisions to these functions, which apply each one as a
// compare-and-set: it takes effect only if the coupon and reservation are still as they were read,
// and otherwise comes back 'stale' for the worker to read and decide again. Each row runs in its own
// subtransaction, so one refusal never undoes the others; rows are taken in coupon order, so two
// concurrent calls lock coupon rows in the same order and cannot deadlock.
import type { Migration } from './types';

export const checkoutBatches: Migration = {
  name: '0006-checkout-batches',
  async up({ context: db }) {
    await db.query(`
      -- Each request: {req, id, coupon, user, order, amount, discount, at, expires}.
      -- Outcomes: reserved | duplicate-request (the request reserved before: its row) | stale (the
      -- coupon is not ISSUED, valid and the user's any more) | the name of a refusing constraint.
      CREATE FUNCTION reserve_coupons(requests jsonb)
        RETURNS TABLE (req text, outcome text, reservation jsonb) LANGUAGE plpgsql AS $$
      #variable_conflict use_column
      DECLARE
        r jsonb;
        x reservations%ROWTYPE;
        refused_by text;
      BEGIN
        FOR r IN SELECT e.value FROM jsonb_array_elements(requests) WITH ORDINALITY AS e(value, n)
                  ORDER BY e.value->>'coupon', e.n LOOP
          req := r->>'req';
          reservation := NULL;
          BEGIN
            SELECT * INTO x FROM reservations WHERE request_id = req;
            IF FOUND THEN
              outcome := 'duplicate-request';
              reservation := to_jsonb(x);
            ELSE
              UPDATE coupons SET status = 'RESERVED', reserved_at = (r->>'at')::timestamptz,
                                 order_id = r->>'order', reservation_id = r->>'id'
               WHERE id = r->>'coupon' AND user_id = r->>'user' AND status = 'ISSUED'
                 AND expires_at > (r->>'at')::timestamptz;
              IF NOT FOUND THEN
                outcome := 'stale';
              ELSE
                INSERT INTO reservations (id, coupon_id, user_id, order_id, order_amount, discount_amount, request_id, expires_at)
                VALUES (r->>'id', r->>'coupon', r->>'user', r->>'order', (r->>'amount')::bigint,
                        (r->>'discount')::bigint, req, (r->>'expires')::timestamptz)
                RETURNING * INTO x;
                outcome := 'reserved';
                reservation := to_jsonb(x);
              END IF;
            END IF;
          EXCEPTION WHEN unique_violation OR check_violation THEN
            GET STACKED DIAGNOSTICS refused_by = CONSTRAINT_NAME;
            outcome := refused_by;
          END;
          RETURN NEXT;
        END LOOP;
      END $$;

      -- Each event: {key, source, eventId, type, orderId, reservationId, couponId, outcome
      -- (APPLIED | IGNORED | CONFLICT), reasonCode, detail, action (confirm | confirm-late | release |
      -- restore | none), endReason, at, expect {reservation, refunded, coupon, couponReservation}}.
      -- reservationId and couponId are null when no reservation matched. Outcomes: done (recorded and,
      -- unless the action is none, applied) | duplicate (the event was processed before) | stale.
      CREATE FUNCTION apply_checkout_events(events jsonb)
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
            INSERT INTO processed_events (source, event_id, type, order_id, reservation_id, outcome, reason_code, detail, processed_at)
            VALUES (e->>'source', e->>'eventId', e->>'type', e->>'orderId', rid, e->>'outcome', e->>'reasonCode', e->>'detail', ts)
            ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
              outcome := 'duplicate';
            ELSE
              IF cid IS NOT NULL THEN
                -- The coupon row first (the lock order of every checkout write), then check that
                -- both rows are as they were when the decision was made.
                SELECT status, reservation_id INTO c_status, c_res FROM coupons WHERE id = cid FOR UPDATE;
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
    `);
  },
  async down({ context: db }) {
    await db.query('DROP FUNCTION reserve_coupons(jsonb); DROP FUNCTION apply_checkout_events(jsonb);');
  },
};
