// Coupon policies: the rules a marketer sets. Checks mirror the domain rules so a bad row cannot exist.
import type { Migration } from './types';

export const createCouponPolicies: Migration = {
  name: '0001-coupon-policies',
  async up({ context: db }) {
    await db.query(`
      CREATE TABLE coupon_policies (
        id                  text PRIMARY KEY,
        name                text NOT NULL,
        description         text,
        discount_type       text NOT NULL,
        discount_value      bigint NOT NULL,
        max_discount_amount bigint,
        min_order_amount    bigint,
        issue_method        text NOT NULL,
        total_quantity      integer,
        per_user_limit      integer NOT NULL DEFAULT 1,
        issue_starts_at     timestamptz(3) NOT NULL,
        issue_ends_at       timestamptz(3),
        valid_until         timestamptz(3),
        valid_days          integer,
        code                text,
        trigger_event       text,
        status              text NOT NULL DEFAULT 'ACTIVE',
        -- Bumped on every change; the Redis copy of a policy is only ever replaced by a newer version.
        version             integer NOT NULL DEFAULT 1,
        created_at          timestamptz(3) NOT NULL DEFAULT now(),
        updated_at          timestamptz(3) NOT NULL DEFAULT now(),
        CONSTRAINT ck_policies_name CHECK (length(name) BETWEEN 1 AND 200),
        CONSTRAINT ck_policies_discount_type CHECK (discount_type IN ('FIXED', 'PERCENTAGE')),
        CONSTRAINT ck_policies_discount_value CHECK (
          discount_value > 0 AND (discount_type <> 'PERCENTAGE' OR discount_value <= 100)),
        CONSTRAINT ck_policies_max_discount CHECK (max_discount_amount IS NULL OR max_discount_amount > 0),
        CONSTRAINT ck_policies_min_order CHECK (min_order_amount IS NULL OR min_order_amount >= 0),
        CONSTRAINT ck_policies_issue_method CHECK (
          issue_method IN ('FIRST_COME', 'DOWNLOAD', 'CODE', 'EVENT', 'DIRECT')),
        CONSTRAINT ck_policies_total_quantity CHECK (total_quantity IS NULL OR total_quantity > 0),
        CONSTRAINT ck_policies_first_come_quantity CHECK (
          issue_method <> 'FIRST_COME' OR total_quantity IS NOT NULL),
        CONSTRAINT ck_policies_per_user_limit CHECK (per_user_limit >= 1),
        CONSTRAINT ck_policies_issue_window CHECK (issue_ends_at IS NULL OR issue_ends_at > issue_starts_at),
        CONSTRAINT ck_policies_validity CHECK (valid_until IS NOT NULL OR valid_days IS NOT NULL),
        CONSTRAINT ck_policies_valid_days CHECK (valid_days IS NULL OR valid_days > 0),
        CONSTRAINT ck_policies_status CHECK (status IN ('ACTIVE', 'PAUSED', 'ENDED')),
        CONSTRAINT ck_policies_code_method CHECK (code IS NULL OR issue_method = 'CODE'),
        CONSTRAINT ck_policies_trigger_method CHECK ((issue_method = 'EVENT') = (trigger_event IS NOT NULL))
      );

      -- Shared codes are matched case-insensitively and must point at one policy.
      CREATE UNIQUE INDEX uq_policies_code ON coupon_policies (upper(code)) WHERE code IS NOT NULL;
      -- GET /coupons/policies lists newest first, users see ACTIVE ones only.
      CREATE INDEX ix_policies_status_created ON coupon_policies (status, created_at DESC, id DESC);
      CREATE INDEX ix_policies_created ON coupon_policies (created_at DESC, id DESC);

      -- I1 relies on the quantity only ever growing: a slot handed out stays within the total.
      CREATE FUNCTION coupon_policies_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF OLD.total_quantity IS NOT NULL
           AND (NEW.total_quantity IS NULL OR NEW.total_quantity < OLD.total_quantity) THEN
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

      CREATE TRIGGER tg_policies_guard_update BEFORE UPDATE ON coupon_policies
        FOR EACH ROW EXECUTE FUNCTION coupon_policies_guard_update();
    `);
  },
  async down({ context: db }) {
    await db.query(`
      DROP TABLE coupon_policies;
      DROP FUNCTION coupon_policies_guard_update();
    `);
  },
};
