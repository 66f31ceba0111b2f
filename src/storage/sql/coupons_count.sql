-- coupons_count_inserts(), coupons_count_uses(), coupons_count_deletes(), coupons_count_truncate():
-- the triggers that keep policy_counters (each policy's issuedCount and usedCount) right under every
-- write to coupons, through policy_counters_add. A policy read then costs a few index probes
-- instead of a pass over the policy's coupons.
--
-- - Inserts: a statement-level trigger over the statement's transition table, one delta per policy
--   per statement, so a bulk INSERT ... SELECT costs one counter write. It stands aside while
--   coupons.counted_by_caller is 'on': insert_issued_coupons (the issue path) inserts row by row in
--   subtransactions and counts its inserted rows once at its end instead.
-- - Updates: a row-level trigger whose WHEN clause lets only a change into or out of USED through
--   (an admin's confirm, a late payment, a refund that restores). The clause is evaluated without
--   calling a trigger function, so a reserve, a release or a timeout sweep costs nothing; a
--   statement-level trigger with transition tables would run on every checkout UPDATE (one row each)
--   and measured 17-47 us a statement against 0 (and 26 us for a change of USED). It too stands
--   aside while coupons.counted_by_caller is 'on': apply_checkout_events (the payment path) counts
--   the coupons it took into or out of USED once per policy at its end.
-- - Deletes and TRUNCATE (the API never does either) keep the counters right too.
--
-- Arguments: none (trigger functions). Return NULL (AFTER triggers).

CREATE OR REPLACE FUNCTION coupons_count_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  d record;
BEGIN
  IF current_setting('coupons.counted_by_caller', true) = 'on' THEN
    RETURN NULL;
  END IF;
  FOR d IN SELECT policy_id, count(*) AS n, count(*) FILTER (WHERE status = 'USED') AS u
             FROM inserted_rows GROUP BY policy_id ORDER BY policy_id LOOP
    PERFORM policy_counters_add(d.policy_id, d.n, d.u);
  END LOOP;
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER tg_coupons_count_inserts AFTER INSERT ON coupons REFERENCING NEW TABLE AS inserted_rows
  FOR EACH STATEMENT EXECUTE FUNCTION coupons_count_inserts();

CREATE OR REPLACE FUNCTION coupons_count_uses() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM policy_counters_add(NEW.policy_id, 0, CASE WHEN NEW.status = 'USED' THEN 1 ELSE -1 END);
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER tg_coupons_count_uses AFTER UPDATE OF status ON coupons
  FOR EACH ROW WHEN ((OLD.status = 'USED') <> (NEW.status = 'USED')
                    AND current_setting('coupons.counted_by_caller', true) IS DISTINCT FROM 'on')
  EXECUTE FUNCTION coupons_count_uses();

CREATE OR REPLACE FUNCTION coupons_count_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  d record;
BEGIN
  FOR d IN SELECT policy_id, count(*) AS n, count(*) FILTER (WHERE status = 'USED') AS u
             FROM deleted_rows GROUP BY policy_id ORDER BY policy_id LOOP
    PERFORM policy_counters_add(d.policy_id, -d.n, -d.u);
  END LOOP;
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER tg_coupons_count_deletes AFTER DELETE ON coupons REFERENCING OLD TABLE AS deleted_rows
  FOR EACH STATEMENT EXECUTE FUNCTION coupons_count_deletes();

CREATE OR REPLACE FUNCTION coupons_count_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE policy_counters SET issued = 0, used = 0;
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER tg_coupons_count_truncate AFTER TRUNCATE ON coupons
  FOR EACH STATEMENT EXECUTE FUNCTION coupons_count_truncate();
