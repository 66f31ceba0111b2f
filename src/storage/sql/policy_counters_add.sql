-- policy_counters_add(p text, d_issued bigint, d_used bigint): adds to a policy's issuedCount and
-- usedCount in policy_counters (8 shard rows per policy; a read sums them, src/storage/policy.ts).
--
-- The delta goes to the first shard no other transaction holds (FOR UPDATE SKIP LOCKED, starting at
-- the backend's own, pg_backend_pid() % 8), so up to 8 concurrent writers of one policy never queue
-- on a hot row, and two transactions never wait on each other's shards (no lock-order deadlock
-- across policies). Only when all 8 are held (or the policy has none) does a writer wait for its own.
--
-- Arguments: p the policy id; d_issued, d_used the deltas (negative for deletes). Returns nothing.
-- Callers: insert_issued_coupons and the triggers of coupons_count.sql.

CREATE OR REPLACE FUNCTION policy_counters_add(p text, d_issued bigint, d_used bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  UPDATE policy_counters SET issued = issued + d_issued, used = used + d_used
   WHERE policy_id = p AND shard = (SELECT shard FROM policy_counters WHERE policy_id = p
                                     ORDER BY (shard - pg_backend_pid() % 8 + 8) % 8
                                     LIMIT 1 FOR UPDATE SKIP LOCKED);
  IF NOT FOUND THEN
    -- Every shard is held by another transaction (or the policy has none): wait for our own.
    INSERT INTO policy_counters (policy_id, shard, issued, used) VALUES (p, pg_backend_pid() % 8, d_issued, d_used)
    ON CONFLICT (policy_id, shard) DO UPDATE
      SET issued = policy_counters.issued + EXCLUDED.issued, used = policy_counters.used + EXCLUDED.used;
  END IF;
END $$;
