-- coupons_guard_update(): who holds a coupon, which stock unit it took, the request that wrote it
-- and the single-use code it was redeemed with never change after issue. Runs BEFORE UPDATE on
-- coupons, for each row, and sets updated_at.
--
-- Arguments: none (a trigger function). Returns NEW with updated_at set, or raises check_violation
--   naming ck_coupons_identity_immutable (no write of the service changes these: a fault).

CREATE OR REPLACE FUNCTION coupons_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.policy_id <> OLD.policy_id OR NEW.user_id <> OLD.user_id
     OR NEW.slot IS DISTINCT FROM OLD.slot OR NEW.request_id <> OLD.request_id
     OR NEW.code_hash IS DISTINCT FROM OLD.code_hash THEN
    RAISE EXCEPTION 'a coupon''s policy, user, slot, request and code are immutable'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_coupons_identity_immutable';
  END IF;
  NEW.updated_at := now();
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER tg_coupons_guard_update BEFORE UPDATE ON coupons
  FOR EACH ROW EXECUTE FUNCTION coupons_guard_update();
