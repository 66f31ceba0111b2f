// Coupons held by users. The database is the last guard of I1 (slot within quantity, one coupon per slot)
// and I2 (per-user limit), whatever Redis decided.
import type { Migration } from './types';

export const createCoupons: Migration = {
  name: '0002-coupons',
  async up({ context: db }) {
    await db.query(`
      CREATE TABLE coupons (
        id             text PRIMARY KEY,
        policy_id      text NOT NULL,
        user_id        text NOT NULL,
        status         text NOT NULL DEFAULT 'ISSUED',
        -- The stock unit this coupon took (1..total_quantity); NULL for unlimited policies.
        slot           integer,
        -- The issue request (job) that created it: a retried job finds its coupon instead of making another.
        request_id     text NOT NULL,
        issued_at      timestamptz(3) NOT NULL DEFAULT now(),
        expires_at     timestamptz(3) NOT NULL,
        reserved_at    timestamptz(3),
        used_at        timestamptz(3),
        order_id       text,
        reservation_id text,
        created_at     timestamptz(3) NOT NULL DEFAULT now(),
        updated_at     timestamptz(3) NOT NULL DEFAULT now(),
        CONSTRAINT fk_coupons_policy FOREIGN KEY (policy_id) REFERENCES coupon_policies (id),
        CONSTRAINT ck_coupons_status CHECK (status IN ('ISSUED', 'RESERVED', 'USED', 'EXPIRED')),
        CONSTRAINT ck_coupons_slot CHECK (slot IS NULL OR slot >= 1),
        CONSTRAINT ck_coupons_user CHECK (length(user_id) BETWEEN 1 AND 128),
        CONSTRAINT uq_coupons_policy_slot UNIQUE (policy_id, slot),
        CONSTRAINT uq_coupons_request UNIQUE (request_id)
      );

      -- GET /coupons/users/:userId pages newest first with a (issued_at, id) cursor.
      CREATE INDEX ix_coupons_user_issued ON coupons (user_id, issued_at DESC, id DESC);
      -- The per-user limit check and the rebuild of per-user counts.
      CREATE INDEX ix_coupons_policy_user ON coupons (policy_id, user_id);
      -- issuedCount / usedCount per policy.
      CREATE INDEX ix_coupons_policy_status ON coupons (policy_id, status);

      CREATE FUNCTION coupons_enforce_limits() RETURNS trigger LANGUAGE plpgsql AS $$
      DECLARE
        quantity integer;
        user_limit integer;
        held integer;
      BEGIN
        SELECT total_quantity, per_user_limit INTO quantity, user_limit
          FROM coupon_policies WHERE id = NEW.policy_id;
        IF NOT FOUND THEN
          RETURN NEW; -- the foreign key reports it
        END IF;
        -- I1: quantities only grow, so a slot within today's total stays within it; the unique
        -- (policy_id, slot) then caps the count at total_quantity without a hot counter row.
        IF quantity IS NOT NULL AND (NEW.slot IS NULL OR NEW.slot > quantity) THEN
          RAISE EXCEPTION 'slot % is outside quantity % of policy %', NEW.slot, quantity, NEW.policy_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_coupons_slot_within_quantity';
        END IF;
        -- I2: serialise inserts of one user for one policy, then count what the user holds.
        PERFORM pg_advisory_xact_lock(hashtextextended(NEW.policy_id || '/' || NEW.user_id, 0));
        SELECT count(*) INTO held FROM coupons WHERE policy_id = NEW.policy_id AND user_id = NEW.user_id;
        IF held >= user_limit THEN
          RAISE EXCEPTION 'user % already holds % coupons of policy %', NEW.user_id, held, NEW.policy_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_coupons_per_user_limit';
        END IF;
        RETURN NEW;
      END $$;

      CREATE TRIGGER tg_coupons_enforce_limits BEFORE INSERT ON coupons
        FOR EACH ROW EXECUTE FUNCTION coupons_enforce_limits();

      -- Who holds a coupon and which stock unit it took never change after issue.
      CREATE FUNCTION coupons_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.policy_id <> OLD.policy_id OR NEW.user_id <> OLD.user_id
           OR NEW.slot IS DISTINCT FROM OLD.slot OR NEW.request_id <> OLD.request_id THEN
          RAISE EXCEPTION 'a coupon''s policy, user, slot and request are immutable'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_coupons_identity_immutable';
        END IF;
        NEW.updated_at := now();
        RETURN NEW;
      END $$;

      CREATE TRIGGER tg_coupons_guard_update BEFORE UPDATE ON coupons
        FOR EACH ROW EXECUTE FUNCTION coupons_guard_update();
    `);
  },
  async down({ context: db }) {
    await db.query(`
      DROP TABLE coupons;
      DROP FUNCTION coupons_enforce_limits();
      DROP FUNCTION coupons_guard_update();
    `);
  },
};
