// The checkout writes and reads of many jobs in one round trip each. On a small machine every round
// trip to Postgres costs a context switch or two; seven statements per job held checkout to ~150 a
// second. Workers read the rows of all the jobs of one event-loop turn with checkout_event_states
// (or a plain query for reserves), decide in TypeScript (models/checkout-rules.ts), and hand the
// decisions to reserve_coupons or apply_checkout_events. Each decision is a compare-and-set: the
// UPDATEs carry the state the decision saw in their WHERE clauses, so it takes effect only if the
// rows are still as read, and otherwise comes back 'stale' for the worker to read and decide again.
// Each row runs in its own subtransaction, so one refusal never undoes the others; rows are taken
// in coupon order and the coupon row is always locked first, so concurrent calls cannot deadlock.
// The functions are plpgsql, so each session keeps their query plans.
import type { Migration } from './types';

export const checkoutFunctions: Migration = {
  name: '0006-checkout-functions',
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
            UPDATE coupons SET status = 'RESERVED', reserved_at = (r->>'at')::timestamptz,
                               order_id = r->>'order', reservation_id = r->>'id'
             WHERE id = r->>'coupon' AND user_id = r->>'user' AND status = 'ISSUED'
               AND expires_at > (r->>'at')::timestamptz;
            IF NOT FOUND THEN
              -- Not ISSUED, valid and the user's any more (or reserved by an earlier run of this
              -- request): the worker reads it again and decides.
              outcome := 'stale';
            ELSE
              INSERT INTO reservations (id, coupon_id, user_id, order_id, order_amount, discount_amount, request_id, expires_at)
              VALUES (r->>'id', r->>'coupon', r->>'user', r->>'order', (r->>'amount')::bigint,
                      (r->>'discount')::bigint, req, (r->>'expires')::timestamptz)
              RETURNING * INTO x;
              outcome := 'reserved';
              reservation := to_jsonb(x);
            END IF;
          EXCEPTION WHEN unique_violation OR check_violation THEN
            GET STACKED DIAGNOSTICS refused_by = CONSTRAINT_NAME;
            IF refused_by = 'uq_reservations_request' THEN
              SELECT * INTO x FROM reservations WHERE request_id = req;
              outcome := 'duplicate-request';
              reservation := to_jsonb(x);
            ELSE
              outcome := refused_by;
            END IF;
          END;
          RETURN NEXT;
        END LOOP;
      END $$;

      -- Each event: {key, source, eventId, type, orderId, reservationId, couponId, outcome
      -- (APPLIED | IGNORED | CONFLICT), reasonCode, detail, action (confirm | confirm-late | release |
      -- restore | none), endReason, at, expect {reservation, refunded, coupon, couponReservation}}.
      -- reservationId and couponId are null when no reservation matched. Outcomes: done (recorded and,
      -- unless the action is none, applied) | duplicate (the event was processed before: the row's
      -- changes are undone) | stale.
      CREATE FUNCTION apply_checkout_events(events jsonb)
        RETURNS TABLE (key text, outcome text, reservation jsonb) LANGUAGE plpgsql AS $$
      #variable_conflict use_column
      DECLARE
        e jsonb;
        rid text;
        cid text;
        act text;
        ts timestamptz;
        exp_c text;
        exp_cr text;
        exp_r text;
        exp_rf boolean;
        x reservations%ROWTYPE;
        have_x boolean;
      BEGIN
        FOR e IN SELECT v.value FROM jsonb_array_elements(events) WITH ORDINALITY AS v(value, n)
                  ORDER BY v.value->>'couponId' NULLS FIRST, v.n LOOP
          key := e->>'key';
          reservation := NULL;
          have_x := false;
          rid := e->>'reservationId';
          cid := e->>'couponId';
          act := e->>'action';
          ts := (e->>'at')::timestamptz;
          exp_c := e->'expect'->>'coupon';
          exp_cr := e->'expect'->>'couponReservation';
          exp_r := e->'expect'->>'reservation';
          exp_rf := (e->'expect'->>'refunded')::boolean;
          BEGIN
            IF cid IS NOT NULL AND act <> 'none' THEN
              -- Compare-and-set, coupon row first: each UPDATE changes its row only if it is as the
              -- decision saw it.
              CASE act
                WHEN 'confirm', 'confirm-late' THEN
                  UPDATE coupons SET status = 'USED', used_at = ts, order_id = e->>'orderId', reservation_id = rid,
                                     reserved_at = COALESCE(reserved_at, ts)
                   WHERE id = cid AND status = exp_c AND reservation_id IS NOT DISTINCT FROM exp_cr;
                ELSE -- release, restore
                  UPDATE coupons SET status = 'ISSUED', reserved_at = NULL, used_at = NULL, order_id = NULL, reservation_id = NULL
                   WHERE id = cid AND status = exp_c AND reservation_id IS NOT DISTINCT FROM exp_cr;
              END CASE;
              IF NOT FOUND THEN RAISE EXCEPTION 'stale' USING ERRCODE = 'CK001'; END IF;
              CASE act
                WHEN 'confirm', 'confirm-late' THEN
                  UPDATE reservations SET status = 'CONFIRMED', ended_at = COALESCE(ended_at, ts), end_reason = e->>'endReason'
                   WHERE id = rid AND status = exp_r AND (refunded_at IS NOT NULL) = exp_rf RETURNING * INTO x;
                WHEN 'release' THEN
                  UPDATE reservations SET status = 'CANCELLED', ended_at = ts, end_reason = e->>'endReason'
                   WHERE id = rid AND status = exp_r AND (refunded_at IS NOT NULL) = exp_rf RETURNING * INTO x;
                ELSE -- restore
                  UPDATE reservations SET refunded_at = ts
                   WHERE id = rid AND status = exp_r AND (refunded_at IS NOT NULL) = exp_rf RETURNING * INTO x;
              END CASE;
              IF NOT FOUND THEN RAISE EXCEPTION 'stale' USING ERRCODE = 'CK001'; END IF;
              have_x := true;
            ELSIF cid IS NOT NULL THEN
              -- Decided to change nothing: still only on the rows as they are.
              PERFORM 1 FROM coupons WHERE id = cid AND status = exp_c AND reservation_id IS NOT DISTINCT FROM exp_cr FOR UPDATE;
              IF NOT FOUND THEN RAISE EXCEPTION 'stale' USING ERRCODE = 'CK001'; END IF;
              SELECT * INTO x FROM reservations WHERE id = rid AND status = exp_r AND (refunded_at IS NOT NULL) = exp_rf;
              IF NOT FOUND THEN RAISE EXCEPTION 'stale' USING ERRCODE = 'CK001'; END IF;
              have_x := true;
            END IF;
            INSERT INTO processed_events (source, event_id, type, order_id, reservation_id, outcome, reason_code, detail, processed_at)
            VALUES (e->>'source', e->>'eventId', e->>'type', e->>'orderId', rid, e->>'outcome', e->>'reasonCode', e->>'detail', ts)
            ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
              -- Processed before: undo this row's changes.
              RAISE EXCEPTION 'duplicate' USING ERRCODE = 'CK002';
            END IF;
            outcome := 'done';
            IF have_x THEN reservation := to_jsonb(x); END IF;
          EXCEPTION
            WHEN SQLSTATE 'CK001' THEN outcome := 'stale';
            WHEN SQLSTATE 'CK002' THEN outcome := 'duplicate';
          END;
          RETURN NEXT;
        END LOOP;
      END $$;
      -- Each event: {key, source, eventId, reservationId, orderId, userId}. For each: whether it was
      -- processed already (and how), how many PENDING reservations its order has (when it names no
      -- reservation), the reservation it names (else its order's PENDING, else newest, one, of the
      -- event's user when it names one) and that reservation's coupon.
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
  async down({ context: db }) {
    await db.query(`
      DROP FUNCTION checkout_event_states(jsonb);
      DROP FUNCTION apply_checkout_events(jsonb);
      DROP FUNCTION reserve_coupons(jsonb);
    `);
  },
};
