-- coupon_policies_open_counters(): gives every new policy its 8 policy_counters shards (all zero), so
-- up to 8 concurrent writers each find one free (policy_counters_add). Runs AFTER INSERT on
-- coupon_policies, for each row.
--
-- Arguments: none (a trigger function). Returns NULL (an AFTER trigger).

CREATE OR REPLACE FUNCTION coupon_policies_open_counters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO policy_counters (policy_id, shard) SELECT NEW.id, s FROM generate_series(0, 7) AS s;
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER tg_coupon_policies_open_counters AFTER INSERT ON coupon_policies
  FOR EACH ROW EXECUTE FUNCTION coupon_policies_open_counters();
