-- coupons_guard_transition(): a coupon moves only along the checkout state machine (I4):
-- ISSUED -> RESERVED | USED | EXPIRED, RESERVED -> USED | ISSUED (released), USED -> ISSUED (a refund
-- that restores it). Runs BEFORE UPDATE OF status on coupons, for each row.
--
-- Arguments: none (a trigger function). Returns NEW unchanged, or raises check_violation naming
--   ck_coupons_transition (the compare-and-set writes of reserve_coupons and apply_checkout_events
--   never ask for another move: a fault).

CREATE OR REPLACE FUNCTION coupons_guard_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status <> OLD.status AND NOT (
       (OLD.status = 'ISSUED' AND NEW.status IN ('RESERVED', 'USED', 'EXPIRED'))
    OR (OLD.status = 'RESERVED' AND NEW.status IN ('USED', 'ISSUED'))
    OR (OLD.status = 'USED' AND NEW.status = 'ISSUED')) THEN
    RAISE EXCEPTION 'a coupon cannot go from % to %', OLD.status, NEW.status
      USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_coupons_transition';
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER tg_coupons_guard_transition BEFORE UPDATE OF status ON coupons
  FOR EACH ROW EXECUTE FUNCTION coupons_guard_transition();
