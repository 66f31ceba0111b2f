// Writes the coupons of many admitted requests in one round trip. Each row gets its own outcome:
// a constraint that refuses one row (a rerun's duplicate, a per-user or slot guard, an inactive
// policy) does not abort the others. Rows are taken in (policy, user) order, so two concurrent
// calls take the per-user advisory locks in the same order and cannot deadlock on them; a user's
// own rows keep the order they were asked in.
import type { Migration } from './types';

export const insertIssuedCoupons: Migration = {
  name: '0004-insert-issued-coupons',
  async up({ context: db }) {
    await db.query(`
      CREATE FUNCTION insert_issued_coupons(requests jsonb)
        RETURNS TABLE (req text, outcome text, coupon jsonb) LANGUAGE plpgsql AS $$
      #variable_conflict use_column
      DECLARE
        r jsonb;
        c coupons%ROWTYPE;
        refused_by text;
      BEGIN
        FOR r IN SELECT e.value FROM jsonb_array_elements(requests) WITH ORDINALITY AS e(value, n)
                  ORDER BY e.value->>'policyId', e.value->>'userId', e.n LOOP
          req := r->>'requestId';
          BEGIN
            INSERT INTO coupons (id, policy_id, user_id, slot, request_id, issued_at, expires_at)
            VALUES (r->>'id', r->>'policyId', r->>'userId', (r->>'slot')::integer, req,
                    (r->>'issuedAt')::timestamptz, (r->>'expiresAt')::timestamptz)
            RETURNING * INTO c;
            outcome := 'inserted';
            coupon := to_jsonb(c);
          EXCEPTION WHEN unique_violation OR check_violation THEN
            GET STACKED DIAGNOSTICS refused_by = CONSTRAINT_NAME;
            -- A rerun whose earlier run committed trips the per-user or slot guard before the
            -- unique request id: its own row is the answer.
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
      END $$;
    `);
  },
  async down({ context: db }) {
    await db.query('DROP FUNCTION insert_issued_coupons(jsonb)');
  },
};
