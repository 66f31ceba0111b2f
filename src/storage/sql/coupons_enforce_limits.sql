-- coupons_enforce_limits(): the trigger that makes Postgres the last guard of I1 (a policy never has
-- more coupons than its total_quantity) and I2 (the per-user limit), whatever Redis admitted. Runs
-- BEFORE INSERT on coupons, for each row.
--
-- - The policy must be ACTIVE (the pause reaches workers through Redis; should that write be lost,
--   Postgres still stops the policy issuing).
-- - I1: quantities only grow (coupon_policies_guard_update), so a slot within today's total stays
--   within it; the unique (policy_id, slot) then caps the count at total_quantity without a hot
--   counter row. A limited policy's coupon must carry a slot.
-- - I2: inserts of one user for one policy are serialised by a transaction-level advisory lock on
--   (policy, user), then the user's coupons are counted (ix_coupons_policy_user).
--
-- Arguments: none (a trigger function). Returns NEW unchanged, or raises check_violation naming
--   ck_coupons_policy_active, ck_coupons_slot_within_quantity or ck_coupons_per_user_limit
--   (insert_issued_coupons answers the name as the row's outcome). An unknown policy passes: the
--   foreign key fk_coupons_policy reports it.

CREATE OR REPLACE FUNCTION coupons_enforce_limits() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  quantity integer;
  user_limit integer;
  policy_status text;
  held integer;
BEGIN
  SELECT total_quantity, per_user_limit, status INTO quantity, user_limit, policy_status
    FROM coupon_policies WHERE id = NEW.policy_id;
  IF NOT FOUND THEN
    RETURN NEW; -- the foreign key reports it
  END IF;
  IF policy_status <> 'ACTIVE' THEN
    RAISE EXCEPTION 'policy % is %', NEW.policy_id, policy_status
      USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_coupons_policy_active';
  END IF;
  IF quantity IS NOT NULL AND (NEW.slot IS NULL OR NEW.slot > quantity) THEN
    RAISE EXCEPTION 'slot % is outside quantity % of policy %', NEW.slot, quantity, NEW.policy_id
      USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_coupons_slot_within_quantity';
  END IF;
  PERFORM pg_advisory_xact_lock(hashtextextended(NEW.policy_id || '/' || NEW.user_id, 0));
  SELECT count(*) INTO held FROM coupons WHERE policy_id = NEW.policy_id AND user_id = NEW.user_id;
  IF held >= user_limit THEN
    RAISE EXCEPTION 'user % already holds % coupons of policy %', NEW.user_id, held, NEW.policy_id
      USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_coupons_per_user_limit';
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER tg_coupons_enforce_limits BEFORE INSERT ON coupons
  FOR EACH ROW EXECUTE FUNCTION coupons_enforce_limits();
