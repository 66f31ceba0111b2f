// Single-use coupon codes. Only a keyed hash (HMAC-SHA256 with CODE_HMAC_SECRET) of each code is
// stored, so a leaked table gives no usable code. A coupon redeemed with a code carries its hash:
// the unique index lets each code be used by one coupon, and the composite foreign key lets a code
// only ever issue its own policy's coupons.
import type { Migration } from './types';

export const createCouponCodes: Migration = {
  name: '0007-coupon-codes',
  async up({ context: db }) {
    await db.query(`
      CREATE TABLE coupon_codes (
        code_hash  text NOT NULL,
        policy_id  text NOT NULL,
        -- The generation job that made it: a rerun of that job replaces its own undelivered codes.
        batch_id   text NOT NULL,
        created_at timestamptz(3) NOT NULL DEFAULT now(),
        CONSTRAINT pk_coupon_codes PRIMARY KEY (code_hash),
        CONSTRAINT uq_coupon_codes_policy UNIQUE (code_hash, policy_id),
        CONSTRAINT fk_coupon_codes_policy FOREIGN KEY (policy_id) REFERENCES coupon_policies (id),
        CONSTRAINT ck_coupon_codes_hash CHECK (code_hash ~ '^[0-9a-f]{64}$')
      );
      CREATE INDEX ix_coupon_codes_batch ON coupon_codes (batch_id);
      CREATE INDEX ix_coupon_codes_policy ON coupon_codes (policy_id);

      ALTER TABLE coupons ADD COLUMN code_hash text;
      ALTER TABLE coupons ADD CONSTRAINT fk_coupons_code
        FOREIGN KEY (code_hash, policy_id) REFERENCES coupon_codes (code_hash, policy_id);
      CREATE UNIQUE INDEX uq_coupons_code_hash ON coupons (code_hash) WHERE code_hash IS NOT NULL;

      -- The code is part of who holds a coupon: immutable like its policy, user and slot.
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

      -- As in 0004, with the code hash of a redeemed single-use code. A code another coupon holds
      -- comes back as uq_coupons_code_hash, a hash that is no code of this policy as fk_coupons_code.
      CREATE OR REPLACE FUNCTION insert_issued_coupons(requests jsonb)
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
            INSERT INTO coupons (id, policy_id, user_id, slot, request_id, issued_at, expires_at, code_hash)
            VALUES (r->>'id', r->>'policyId', r->>'userId', (r->>'slot')::integer, req,
                    (r->>'issuedAt')::timestamptz, (r->>'expiresAt')::timestamptz, r->>'codeHash')
            RETURNING * INTO c;
            outcome := 'inserted';
            coupon := to_jsonb(c);
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
      END $$;
    `);
  },
  async down({ context: db }) {
    await db.query(`
      CREATE OR REPLACE FUNCTION insert_issued_coupons(requests jsonb)
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
      CREATE OR REPLACE FUNCTION coupons_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.policy_id <> OLD.policy_id OR NEW.user_id <> OLD.user_id
           OR NEW.slot IS DISTINCT FROM OLD.slot OR NEW.request_id <> OLD.request_id THEN
          RAISE EXCEPTION 'a coupon''s policy, user, slot and request are immutable'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_coupons_identity_immutable';
        END IF;
        NEW.updated_at := now();
        RETURN NEW;
      END $$;
      DROP INDEX uq_coupons_code_hash;
      ALTER TABLE coupons DROP CONSTRAINT fk_coupons_code;
      ALTER TABLE coupons DROP COLUMN code_hash;
      DROP TABLE coupon_codes;
    `);
  },
};
