// Tightens two guards: a coupon is only written for an ACTIVE policy (the pause reaches workers
// through Redis; should that write be lost, Postgres still stops the policy issuing), and a policy
// cannot move between limited and unlimited (coupons issued without a slot would not count
// against a quantity set later).
import type { Migration } from './types';

export const guardStatusAndLimits: Migration = {
  name: '0003-guard-status-and-limits',
  async up({ context: db }) {
    await db.query(`
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

      CREATE OR REPLACE FUNCTION coupon_policies_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF (OLD.total_quantity IS NULL) <> (NEW.total_quantity IS NULL)
           OR NEW.total_quantity < OLD.total_quantity THEN
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
    `);
  },
  // Down restores the 0002 coupon guard; the stricter policy guard stays (it only refuses changes
  // the API never makes).
  async down({ context: db }) {
    await db.query(`
      CREATE OR REPLACE FUNCTION coupons_enforce_limits() RETURNS trigger LANGUAGE plpgsql AS $$
      DECLARE
        quantity integer;
        user_limit integer;
        held integer;
      BEGIN
        SELECT total_quantity, per_user_limit INTO quantity, user_limit FROM coupon_policies WHERE id = NEW.policy_id;
        IF NOT FOUND THEN
          RETURN NEW;
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
    `);
  },
};
