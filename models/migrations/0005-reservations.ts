// Checkout: reservations of coupons for orders, and the payment events already applied. Postgres is
// the last guard of I4 (one PENDING reservation and one live use per coupon, legal state changes
// only) and I5 (an event id is recorded in the transaction that applies it, once). The functions
// that write these tables are in 0006.
import type { Migration } from './types';

export const createReservations: Migration = {
  name: '0005-reservations',
  async up({ context: db }) {
    await db.query(`
      -- Whether a refund gives the coupon back (when it is still valid).
      ALTER TABLE coupon_policies ADD COLUMN restore_on_refund boolean NOT NULL DEFAULT true;

      CREATE TABLE reservations (
        id              text PRIMARY KEY,
        coupon_id       text NOT NULL,
        user_id         text NOT NULL,
        order_id        text NOT NULL,
        order_amount    bigint NOT NULL,
        discount_amount bigint NOT NULL,
        status          text NOT NULL DEFAULT 'PENDING',
        -- The reserve job that made it: a rerun of the job finds it instead of reserving again.
        request_id      text NOT NULL,
        expires_at      timestamptz(3) NOT NULL,
        -- When and why it left PENDING (PAYMENT_COMPLETED, PAYMENT_FAILED, CANCELLED_BY_USER, TIMEOUT, ...).
        ended_at        timestamptz(3),
        end_reason      text,
        refunded_at     timestamptz(3),
        created_at      timestamptz(3) NOT NULL DEFAULT now(),
        updated_at      timestamptz(3) NOT NULL DEFAULT now(),
        CONSTRAINT fk_reservations_coupon FOREIGN KEY (coupon_id) REFERENCES coupons (id),
        CONSTRAINT ck_reservations_status CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED', 'EXPIRED')),
        CONSTRAINT ck_reservations_amounts CHECK (order_amount >= 0 AND discount_amount >= 0 AND discount_amount <= order_amount),
        CONSTRAINT ck_reservations_ended CHECK ((status = 'PENDING') = (ended_at IS NULL)),
        CONSTRAINT ck_reservations_refund CHECK (refunded_at IS NULL OR status = 'CONFIRMED'),
        CONSTRAINT uq_reservations_request UNIQUE (request_id)
      );

      -- I4: at most one PENDING reservation, and at most one unrefunded use, per coupon.
      CREATE UNIQUE INDEX uq_reservations_pending_coupon ON reservations (coupon_id) WHERE status = 'PENDING';
      CREATE UNIQUE INDEX uq_reservations_used_coupon ON reservations (coupon_id) WHERE status = 'CONFIRMED' AND refunded_at IS NULL;
      -- The timeout sweeper reads PENDING reservations in expiry order.
      CREATE INDEX ix_reservations_pending_expiry ON reservations (expires_at) WHERE status = 'PENDING';
      -- Payment events name the order; an order's newest reservation comes first.
      CREATE INDEX ix_reservations_order ON reservations (order_id, created_at DESC);
      -- An order's PENDING reservations are counted for every payment event that names no
      -- reservation; without this the planner ANDs the order index with the whole pending-expiry
      -- index (15 ms an event once a few thousand reservations are pending).
      CREATE INDEX ix_reservations_pending_order ON reservations (order_id) WHERE status = 'PENDING';

      -- A coupon moves only along the checkout state machine, and its reservation fields agree with its state.
      ALTER TABLE coupons ADD CONSTRAINT ck_coupons_held CHECK (
        (status IN ('RESERVED', 'USED')) = (reservation_id IS NOT NULL AND order_id IS NOT NULL));

      CREATE FUNCTION coupons_guard_transition() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.status <> OLD.status AND NOT (
             (OLD.status = 'ISSUED' AND NEW.status IN ('RESERVED', 'USED', 'EXPIRED'))
          OR (OLD.status = 'RESERVED' AND NEW.status IN ('USED', 'ISSUED'))
          OR (OLD.status = 'USED' AND NEW.status = 'ISSUED')) THEN
          RAISE EXCEPTION 'a coupon cannot go from % to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_coupons_transition';
        END IF;
        RETURN NEW;
      END $$;

      CREATE TRIGGER tg_coupons_guard_transition BEFORE UPDATE OF status ON coupons
        FOR EACH ROW EXECUTE FUNCTION coupons_guard_transition();

      CREATE FUNCTION reservations_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.coupon_id <> OLD.coupon_id OR NEW.user_id <> OLD.user_id OR NEW.order_id <> OLD.order_id
           OR NEW.order_amount <> OLD.order_amount OR NEW.discount_amount <> OLD.discount_amount
           OR NEW.request_id <> OLD.request_id THEN
          RAISE EXCEPTION 'a reservation''s coupon, user, order and amounts are immutable'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_reservations_immutable';
        END IF;
        -- PENDING ends once; an ended reservation can only be confirmed by a late payment.
        IF NEW.status <> OLD.status AND NOT (
             (OLD.status = 'PENDING' AND NEW.status IN ('CONFIRMED', 'CANCELLED', 'EXPIRED'))
          OR (OLD.status IN ('CANCELLED', 'EXPIRED') AND NEW.status = 'CONFIRMED')) THEN
          RAISE EXCEPTION 'a reservation cannot go from % to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_reservations_transition';
        END IF;
        NEW.updated_at := now();
        RETURN NEW;
      END $$;

      CREATE TRIGGER tg_reservations_guard_update BEFORE UPDATE ON reservations
        FOR EACH ROW EXECUTE FUNCTION reservations_guard_update();

      -- I5: every Kafka event (and every admin confirm) that took effect, recorded in the same
      -- transaction as its effect. A redelivered event finds its row and changes nothing.
      CREATE TABLE processed_events (
        source         text NOT NULL,
        event_id       text NOT NULL,
        type           text NOT NULL,
        order_id       text,
        reservation_id text,
        -- APPLIED, IGNORED (nothing to do) or CONFLICT (a payment that could not take effect).
        outcome        text NOT NULL,
        reason_code    text,
        detail         text,
        processed_at   timestamptz(3) NOT NULL DEFAULT now(),
        CONSTRAINT pk_processed_events PRIMARY KEY (source, event_id),
        CONSTRAINT ck_processed_events_outcome CHECK (outcome IN ('APPLIED', 'IGNORED', 'CONFLICT'))
      );
      CREATE INDEX ix_processed_events_conflicts ON processed_events (processed_at) WHERE outcome = 'CONFLICT';

      -- Checkout updates a coupon twice (RESERVED, then USED). With status in an index every such
      -- update wrote a new entry into all six of the table's indexes; without it, and with room left
      -- in each page, Postgres updates the row in place (HOT: no index entries, less WAL and vacuum).
      -- Counting a policy's coupons by status walks the policy's rows through ix_coupons_policy_user.
      DROP INDEX ix_coupons_policy_status;
      ALTER TABLE coupons SET (fillfactor = 85);
    `);
  },
  async down({ context: db }) {
    await db.query(`
      ALTER TABLE coupons RESET (fillfactor);
      CREATE INDEX ix_coupons_policy_status ON coupons (policy_id, status);
      DROP TABLE processed_events;
      DROP TABLE reservations;
      DROP FUNCTION reservations_guard_update();
      DROP TRIGGER tg_coupons_guard_transition ON coupons;
      DROP FUNCTION coupons_guard_transition();
      ALTER TABLE coupons DROP CONSTRAINT ck_coupons_held;
      ALTER TABLE coupon_policies DROP COLUMN restore_on_refund;
    `);
  },
};
