-- reservations_guard_update(): a reservation's coupon, user, order, amounts and request never change,
-- and its status moves only along the checkout state machine (I4): PENDING ends once (CONFIRMED,
-- CANCELLED, EXPIRED); an ended reservation can only be confirmed by a late payment. Runs BEFORE
-- UPDATE on reservations, for each row, and sets updated_at.
--
-- Arguments: none (a trigger function). Returns NEW with updated_at set, or raises check_violation
--   naming ck_reservations_immutable or ck_reservations_transition (a fault: the writes of
--   apply_checkout_events and the timeout sweep never ask for either).

CREATE OR REPLACE FUNCTION reservations_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.coupon_id <> OLD.coupon_id OR NEW.user_id <> OLD.user_id OR NEW.order_id <> OLD.order_id
     OR NEW.order_amount <> OLD.order_amount OR NEW.discount_amount <> OLD.discount_amount
     OR NEW.request_id <> OLD.request_id THEN
    RAISE EXCEPTION 'a reservation''s coupon, user, order and amounts are immutable'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_reservations_immutable';
  END IF;
  -- PENDING ends once; an ended reservation can only be confirmed by a late payment.
  IF NEW.status <> OLD.status AND NOT (
       (OLD.status = 'PENDING' AND NEW.status IN ('CONFIRMED', 'CANCELLED', 'EXPIRED'))
    OR (OLD.status IN ('CANCELLED', 'EXPIRED') AND NEW.status = 'CONFIRMED')) THEN
    RAISE EXCEPTION 'a reservation cannot go from % to %', OLD.status, NEW.status
      USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_reservations_transition';
  END IF;
  NEW.updated_at := now();
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER tg_reservations_guard_update BEFORE UPDATE ON reservations
  FOR EACH ROW EXECUTE FUNCTION reservations_guard_update();
