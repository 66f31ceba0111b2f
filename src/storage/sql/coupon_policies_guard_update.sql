-- coupon_policies_guard_update(): keeps the changes to a policy within what the invariants rely on,
-- and versions each change. Runs BEFORE UPDATE on coupon_policies, for each row.
--
-- - I1 relies on the quantity only ever growing: a slot handed out stays within the total. A policy
--   cannot move between limited and unlimited either (coupons issued without a slot would not count
--   against a quantity set later).
-- - The per-user limit may not be lowered; an ENDED policy stays ENDED.
-- - version is bumped on every change (the Redis copy of a policy is only ever replaced by a newer
--   version) and updated_at set.
--
-- Arguments: none (a trigger function). Returns NEW with version and updated_at set, or raises
--   check_violation naming ck_policies_quantity_only_grows, ck_policies_user_limit_only_grows or
--   ck_policies_ended_is_final (changes the API never makes: a fault if one shows up).

CREATE OR REPLACE FUNCTION coupon_policies_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (OLD.total_quantity IS NULL) <> (NEW.total_quantity IS NULL)
     OR NEW.total_quantity < OLD.total_quantity THEN
    RAISE EXCEPTION 'total_quantity may only be raised (% -> %)', OLD.total_quantity, NEW.total_quantity
      USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_policies_quantity_only_grows';
  END IF;
  IF NEW.per_user_limit < OLD.per_user_limit THEN
    RAISE EXCEPTION 'per_user_limit may not be lowered'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_policies_user_limit_only_grows';
  END IF;
  IF OLD.status = 'ENDED' AND NEW.status <> 'ENDED' THEN
    RAISE EXCEPTION 'an ENDED policy stays ENDED'
      USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_policies_ended_is_final';
  END IF;
  NEW.version := OLD.version + 1;
  NEW.updated_at := now();
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER tg_policies_guard_update BEFORE UPDATE ON coupon_policies
  FOR EACH ROW EXECUTE FUNCTION coupon_policies_guard_update();
