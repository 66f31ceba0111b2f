-- insert_issued_coupons(requests jsonb): writes the coupons of many admitted issue requests in one
-- round trip (src/storage/coupon.ts, insertIssuedCoupon: the inserts of one event-loop turn).
--
-- Each row runs in its own subtransaction and gets its own outcome: a constraint that refuses one
-- row (a rerun's duplicate, a per-user or slot guard, an inactive policy, a used or foreign code)
-- does not abort the others. Rows are taken in (policy, user) order, so two concurrent calls take
-- the per-user advisory locks of coupons_enforce_limits in the same order and cannot deadlock on
-- them; a user's own rows keep the order they were asked in. The inserted rows are counted into
-- policy_counters once, per policy in policy order, at the end (coupons_count_inserts stands aside
-- while coupons.counted_by_caller is on), so a batch of a hundred coupons is one counter write.
--
-- Arguments: requests, a JSON array of {id, requestId, policyId, userId, slot (null for a policy
--   without a quantity), issuedAt, expiresAt, codeHash (the hash of a redeemed single-use code, or
--   absent)}.
-- Returns one row per request: req (its requestId), outcome, coupon (the coupons row as to_jsonb
--   gives it; null for a refusal).
-- Outcomes: inserted | duplicate-request (the request wrote its coupon before: that row, also when
--   a per-user or slot guard tripped before the unique request id) | the refusing constraint, which
--   src/storage/coupon.ts maps: ck_coupons_per_user_limit (user-limit), ck_coupons_policy_active
--   (policy-inactive), uq_coupons_policy_slot and ck_coupons_slot_within_quantity (slot-taken),
--   uq_coupons_code_hash (code-used: another coupon holds the code), fk_coupons_code (code-unknown:
--   no code of this policy). Any other name is a fault.

CREATE OR REPLACE FUNCTION insert_issued_coupons(requests jsonb)
  RETURNS TABLE (req text, outcome text, coupon jsonb) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  r jsonb;
  c coupons%ROWTYPE;
  refused_by text;
  inserted_for text[] := '{}';
  d record;
BEGIN
  PERFORM set_config('coupons.counted_by_caller', 'on', true);
  FOR r IN SELECT e.value FROM jsonb_array_elements(requests) WITH ORDINALITY AS e(value, n)
            ORDER BY e.value->>'policyId', e.value->>'userId', e.n LOOP
    req := r->>'requestId';
    BEGIN
      INSERT INTO coupons (id, policy_id, user_id, slot, request_id, issued_at, expires_at, code_hash)
      VALUES (r->>'id', r->>'policyId', r->>'userId', (r->>'slot')::integer, req,
              (r->>'issuedAt')::timestamptz, (r->>'expiresAt')::timestamptz, r->>'codeHash')
      RETURNING * INTO c;
      outcome := 'inserted';
      coupon := to_jsonb(c);
      inserted_for := inserted_for || c.policy_id;
    EXCEPTION WHEN unique_violation OR check_violation OR foreign_key_violation THEN
      GET STACKED DIAGNOSTICS refused_by = CONSTRAINT_NAME;
      SELECT * INTO c FROM coupons WHERE request_id = req;
      IF FOUND THEN
        outcome := 'duplicate-request';
        coupon := to_jsonb(c);
      ELSE
        outcome := refused_by;
        coupon := NULL;
      END IF;
    END;
    RETURN NEXT;
  END LOOP;
  PERFORM set_config('coupons.counted_by_caller', 'off', true);
  FOR d IN SELECT p, count(*) AS n FROM unnest(inserted_for) AS p GROUP BY p ORDER BY p LOOP
    PERFORM policy_counters_add(d.p, d.n, 0);
  END LOOP;
END $$;
