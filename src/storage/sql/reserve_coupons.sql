-- reserve_coupons(requests jsonb): writes the reservations of many reserve jobs in one round trip
-- (src/storage/reservation.ts: the decisions of one event-loop turn, made in TypeScript by
-- src/domain/checkout-rules.ts from rows read just before).
--
-- Each decision is a compare-and-set: the coupon UPDATE carries the state the decision saw (ISSUED,
-- still valid, the user's), so it takes effect only if the row is still as read, and otherwise comes
-- back 'stale' for the worker to read and decide again. The first reservation on an order writes its
-- owner into orders (I10). Each row runs in its own subtransaction, so one refusal never undoes the
-- others. Rows are taken in (order, coupon) order: two calls that reserve under the same orders queue
-- on them in one order (their coupons never meet: a redlock holds each coupon while it is reserved).
-- plpgsql, so each session keeps the query plans.
--
-- Arguments: requests, a JSON array of {req (the request id), id (the new reservation's), coupon,
--   user, order, amount, discount, fingerprint (the digest of the reserve body), at, expires}.
-- Returns one row per request: req, outcome, reservation (the reservations row as to_jsonb gives
--   it, or null).
-- Outcomes: reserved | duplicate-request (the request id reserved before: its row, whose fingerprint
--   the worker compares) | stale (the coupon is not ISSUED, valid and the user's any more) | the
--   refusing constraint, which src/storage/reservation.ts maps: uq_reservations_pending_coupon
--   (COUPON_NOT_AVAILABLE), uq_reservations_live_order (ORDER_ALREADY_HAS_COUPON: the order holds
--   another coupon), fk_reservations_order_owner (ORDER_NOT_OWNED: the order is another user's; also
--   answered instead of uq_reservations_live_order then, so a stranger learns nothing of the order).

CREATE OR REPLACE FUNCTION reserve_coupons(requests jsonb)
  RETURNS TABLE (req text, outcome text, reservation jsonb) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  r jsonb;
  x reservations%ROWTYPE;
  refused_by text;
BEGIN
  FOR r IN SELECT e.value FROM jsonb_array_elements(requests) WITH ORDINALITY AS e(value, n)
            ORDER BY e.value->>'order', e.value->>'coupon', e.n LOOP
    req := r->>'req';
    reservation := NULL;
    BEGIN
      UPDATE coupons SET status = 'RESERVED', reserved_at = (r->>'at')::timestamptz,
                         order_id = r->>'order', reservation_id = r->>'id'
       WHERE id = r->>'coupon' AND user_id = r->>'user' AND status = 'ISSUED'
         AND expires_at > (r->>'at')::timestamptz;
      IF NOT FOUND THEN
        outcome := 'stale';
      ELSE
        -- The first reservation on an order makes its owner; the foreign key refuses others.
        INSERT INTO orders (order_id, user_id) VALUES (r->>'order', r->>'user') ON CONFLICT DO NOTHING;
        INSERT INTO reservations (id, coupon_id, user_id, order_id, order_amount, discount_amount, request_id, request_fingerprint, expires_at)
        VALUES (r->>'id', r->>'coupon', r->>'user', r->>'order', (r->>'amount')::bigint,
                (r->>'discount')::bigint, req, r->>'fingerprint', (r->>'expires')::timestamptz)
        RETURNING * INTO x;
        outcome := 'reserved';
        reservation := to_jsonb(x);
      END IF;
    EXCEPTION WHEN unique_violation OR check_violation OR foreign_key_violation THEN
      GET STACKED DIAGNOSTICS refused_by = CONSTRAINT_NAME;
      IF refused_by = 'uq_reservations_request' THEN
        SELECT * INTO x FROM reservations WHERE request_id = req;
        outcome := 'duplicate-request';
        reservation := to_jsonb(x);
      ELSIF refused_by = 'uq_reservations_live_order'
            AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.order_id = r->>'order' AND o.user_id = r->>'user') THEN
        outcome := 'fk_reservations_order_owner';
      ELSE
        outcome := refused_by;
      END IF;
    END;
    RETURN NEXT;
  END LOOP;
END $$;
