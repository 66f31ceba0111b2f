-- reservations_guard_fingerprint(): a reservation's request_fingerprint (I8: the digest of the
-- reserve body under its Idempotency-Key) never changes once written. Runs BEFORE UPDATE OF
-- request_fingerprint on reservations, for each row whose fingerprint the update changes (the WHEN
-- clause of the trigger: other updates never call it).
--
-- Arguments: none (a trigger function). Always raises check_violation naming
--   ck_reservations_immutable (a fault).

CREATE OR REPLACE FUNCTION reservations_guard_fingerprint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'a reservation''s request fingerprint is immutable'
    USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_reservations_immutable';
END $$;

CREATE OR REPLACE TRIGGER tg_reservations_guard_fingerprint BEFORE UPDATE OF request_fingerprint ON reservations
  FOR EACH ROW WHEN (NEW.request_fingerprint IS DISTINCT FROM OLD.request_fingerprint)
  EXECUTE FUNCTION reservations_guard_fingerprint();
