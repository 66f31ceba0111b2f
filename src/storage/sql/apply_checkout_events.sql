-- apply_checkout_events(events jsonb): applies the decisions about many payment events (and admin
-- confirms) in one round trip (src/storage/reservation.ts: the events of one event-loop turn, read with
-- checkout_event_states and decided in TypeScript by src/domain/checkout-rules.ts).
--
-- Each decision is a compare-and-set, coupon row first: each UPDATE carries the state the decision
-- saw in its WHERE clause, so it takes effect only if the row is still as read, and otherwise the
-- event comes back 'stale' for the worker to read and decide again. The event is recorded in
-- processed_events (I5) in the same subtransaction as its effect; an event recorded before undoes
-- the row's changes. Each event runs in its own subtransaction, so one never undoes the others;
-- events are taken in coupon order and the coupon row is always locked first, so concurrent calls
-- cannot deadlock. SQLSTATEs CK001 (stale) and CK002 (duplicate) are raised and caught inside.
-- The coupons taken into or out of USED are counted into policy_counters once per policy, in
-- policy order, at the end (coupons_count_uses stands aside while coupons.counted_by_caller is on),
-- so a turn's hundred confirms of one sale are one counter write, not a hundred.
--
-- Arguments: events, a JSON array of {key, source, eventId, type, orderId, reservationId, couponId
--   (both null when no reservation matched), outcome (APPLIED | IGNORED | CONFLICT, recorded),
--   reasonCode, detail, action (confirm | confirm-late | release | restore | none), endReason, at,
--   expect {reservation, refunded, coupon, couponReservation} (the state the decision saw)}.
-- Returns one row per event: key, outcome, reservation (the reservations row after the change as
--   to_jsonb gives it, or null when the event matched none).
-- Outcomes: done (recorded and, unless the action is none, applied) | duplicate (processed before:
--   the row's changes are undone) | stale | uq_reservations_live_order (a confirm-late of an order
--   that holds another live reservation since: nothing changed, nothing recorded; the worker records
--   it as a conflict). Any other refusal is raised: a fault.

CREATE OR REPLACE FUNCTION apply_checkout_events(events jsonb)
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
  refused_by text;
  pol text;
  used_delta integer;
  counted_policy text[] := '{}';
  counted_delta integer[] := '{}';
  d record;
BEGIN
  PERFORM set_config('coupons.counted_by_caller', 'on', true);
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
    used_delta := 0;
    pol := NULL;
    BEGIN
      IF cid IS NOT NULL AND act <> 'none' THEN
        -- Compare-and-set, coupon row first: each UPDATE changes its row only if it is as the
        -- decision saw it.
        CASE act
          WHEN 'confirm', 'confirm-late' THEN
            UPDATE coupons SET status = 'USED', used_at = ts, order_id = e->>'orderId', reservation_id = rid,
                               reserved_at = COALESCE(reserved_at, ts)
             WHERE id = cid AND status = exp_c AND reservation_id IS NOT DISTINCT FROM exp_cr
            RETURNING policy_id INTO pol;
            IF FOUND AND exp_c <> 'USED' THEN used_delta := 1; END IF;
          ELSE -- release, restore
            UPDATE coupons SET status = 'ISSUED', reserved_at = NULL, used_at = NULL, order_id = NULL, reservation_id = NULL
             WHERE id = cid AND status = exp_c AND reservation_id IS NOT DISTINCT FROM exp_cr
            RETURNING policy_id INTO pol;
            IF FOUND AND exp_c = 'USED' THEN used_delta := -1; END IF;
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
      -- Counted only once the event's subtransaction has nothing left that could undo it.
      IF used_delta <> 0 THEN
        counted_policy := counted_policy || pol;
        counted_delta := counted_delta || used_delta;
      END IF;
    EXCEPTION
      WHEN SQLSTATE 'CK001' THEN outcome := 'stale';
      WHEN SQLSTATE 'CK002' THEN outcome := 'duplicate';
      WHEN unique_violation THEN
        -- A late payment of an order that has taken another coupon since: the worker records it
        -- as a conflict. Any other refusal is a fault.
        GET STACKED DIAGNOSTICS refused_by = CONSTRAINT_NAME;
        IF refused_by IS DISTINCT FROM 'uq_reservations_live_order' THEN RAISE; END IF;
        outcome := refused_by;
    END;
    RETURN NEXT;
  END LOOP;
  PERFORM set_config('coupons.counted_by_caller', 'off', true);
  FOR d IN SELECT c.p, sum(c.n) AS n FROM unnest(counted_policy, counted_delta) AS c(p, n) GROUP BY c.p ORDER BY c.p LOOP
    IF d.n <> 0 THEN PERFORM policy_counters_add(d.p, 0, d.n); END IF;
  END LOOP;
END $$;
