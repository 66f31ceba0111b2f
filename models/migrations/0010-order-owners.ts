// Orders and idempotency keys, guarded by Postgres (I10, I8).
//
// - orders: an order belongs to the user who first reserved on it. reserve_coupons writes the row
//   with the reservation, in the same subtransaction, and a reservation's (order_id, user_id) is a
//   foreign key to it (fk_reservations_order_owner): nobody else can reserve under the order.
// - uq_reservations_live_order: an order holds at most one PENDING or CONFIRMED reservation (no
//   coupon stacking). A reservation that ended (CANCELLED, EXPIRED) frees the order for another.
// - reservations.request_fingerprint: the digest of the reserve body (couponId, orderId,
//   orderAmount) under its Idempotency-Key, so another body under a key that reserved is told
//   apart from a replay by Postgres alone, whatever Redis remembers. Rows from before have none;
//   their own columns are the body.
// - reserve_coupons writes the order row and the fingerprint and names the new refusals; it takes
//   its rows in (order, coupon) order, so two calls that reserve under the same orders queue on
//   them in one order (their coupons never meet: a redlock holds each coupon while it is reserved).
// - apply_checkout_events answers uq_reservations_live_order for a late payment of an order that
//   has since taken another coupon (recorded as a conflict by the worker, never applied).
// - checkout_event_states also answers the order's owner, and picks an order's live (PENDING or
//   CONFIRMED) reservation before its newest ended one.
import { checkoutFunctions } from './0006-checkout-functions';
import { eventStateProbes } from './0009-event-state-probes';
import type { Migration } from './types';

export const orderOwners: Migration = {
  name: '0010-order-owners',
  async up({ context: db }) {
    await db.query(`
      CREATE TABLE orders (
        order_id   text NOT NULL,
        user_id    text NOT NULL,
        created_at timestamptz(3) NOT NULL DEFAULT now(),
        CONSTRAINT pk_orders PRIMARY KEY (order_id),
        -- The target of fk_reservations_order_owner.
        CONSTRAINT uq_orders_owner UNIQUE (order_id, user_id)
      );
      -- Orders reserved on before: the user of the first reservation owns it.
      INSERT INTO orders (order_id, user_id, created_at)
      SELECT DISTINCT ON (order_id) order_id, user_id, created_at FROM reservations ORDER BY order_id, created_at, id;

      ALTER TABLE reservations ADD COLUMN request_fingerprint text;
      ALTER TABLE reservations ADD CONSTRAINT fk_reservations_order_owner
        FOREIGN KEY (order_id, user_id) REFERENCES orders (order_id, user_id) NOT VALID;

      DO $$
      DECLARE
        crowded integer;
      BEGIN
        -- Rows written before by another user under an order stay as they are (the key checks
        -- new rows only); without such rows the key is checked for every row.
        IF NOT EXISTS (SELECT 1 FROM reservations r JOIN orders o USING (order_id) WHERE r.user_id <> o.user_id) THEN
          ALTER TABLE reservations VALIDATE CONSTRAINT fk_reservations_order_owner;
        END IF;
        SELECT count(*) INTO crowded FROM (SELECT order_id FROM reservations WHERE status IN ('PENDING', 'CONFIRMED')
                                            GROUP BY order_id HAVING count(*) > 1) t;
        IF crowded > 0 THEN
          RAISE EXCEPTION '% orders hold more than one PENDING or CONFIRMED reservation; see docs/RUNBOOK.md (Migration 0010)', crowded;
        END IF;
      END $$;
      -- I10: one live coupon per order.
      CREATE UNIQUE INDEX uq_reservations_live_order ON reservations (order_id) WHERE status IN ('PENDING', 'CONFIRMED');

      CREATE FUNCTION reservations_guard_fingerprint() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        RAISE EXCEPTION 'a reservation''s request fingerprint is immutable'
          USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_reservations_immutable';
      END $$;
      CREATE TRIGGER tg_reservations_guard_fingerprint BEFORE UPDATE OF request_fingerprint ON reservations
        FOR EACH ROW WHEN (NEW.request_fingerprint IS DISTINCT FROM OLD.request_fingerprint)
        EXECUTE FUNCTION reservations_guard_fingerprint();

      -- Each request: {req, id, coupon, user, order, amount, discount, fingerprint, at, expires}.
      -- Outcomes: reserved | duplicate-request (the request id reserved before: its row, whose
      -- fingerprint the worker compares) | stale | the name of a refusing constraint:
      -- uq_reservations_pending_coupon, uq_reservations_live_order (the order holds another
      -- coupon), fk_reservations_order_owner (the order is another user's; also answered instead
      -- of uq_reservations_live_order then, so a stranger learns nothing of the order).
      CREATE OR REPLACE FUNCTION reserve_coupons(requests jsonb)
        RETURNS TABLE (req text, outcome text, reservation jsonb) LANGUAGE plpgsql AS $$
      #variable_conflict use_column
      DECLARE
        r jsonb;
        x reservations%ROWTYPE;
        refused_by text;
      BEGIN
        FOR r IN SELECT e.value FROM jsonb_array_elements(requests) WITH ORDINALITY AS e(value, n)
                  ORDER BY e.value->>'order', e.value->>'coupon', e.n LOOP
          req := r->>'req';
          reservation := NULL;
          BEGIN
            UPDATE coupons SET status = 'RESERVED', reserved_at = (r->>'at')::timestamptz,
                               order_id = r->>'order', reservation_id = r->>'id'
             WHERE id = r->>'coupon' AND user_id = r->>'user' AND status = 'ISSUED'
               AND expires_at > (r->>'at')::timestamptz;
            IF NOT FOUND THEN
              outcome := 'stale';
            ELSE
              -- The first reservation on an order makes its owner; the foreign key refuses others.
              INSERT INTO orders (order_id, user_id) VALUES (r->>'order', r->>'user') ON CONFLICT DO NOTHING;
              INSERT INTO reservations (id, coupon_id, user_id, order_id, order_amount, discount_amount, request_id, request_fingerprint, expires_at)
              VALUES (r->>'id', r->>'coupon', r->>'user', r->>'order', (r->>'amount')::bigint,
                      (r->>'discount')::bigint, req, r->>'fingerprint', (r->>'expires')::timestamptz)
              RETURNING * INTO x;
              outcome := 'reserved';
              reservation := to_jsonb(x);
            END IF;
          EXCEPTION WHEN unique_violation OR check_violation OR foreign_key_violation THEN
            GET STACKED DIAGNOSTICS refused_by = CONSTRAINT_NAME;
            IF refused_by = 'uq_reservations_request' THEN
              SELECT * INTO x FROM reservations WHERE request_id = req;
              outcome := 'duplicate-request';
              reservation := to_jsonb(x);
            ELSIF refused_by = 'uq_reservations_live_order'
                  AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.order_id = r->>'order' AND o.user_id = r->>'user') THEN
              outcome := 'fk_reservations_order_owner';
            ELSE
              outcome := refused_by;
            END IF;
          END;
          RETURN NEXT;
        END LOOP;
      END $$;
    `);
    await db.query(APPLY_CHECKOUT_EVENTS);
    await db.query(CHECKOUT_EVENT_STATES);
  },
  async down(params) {
    const db = params.context;
    await db.query(`
      DROP FUNCTION checkout_event_states(jsonb);
      DROP FUNCTION apply_checkout_events(jsonb);
      DROP FUNCTION reserve_coupons(jsonb);
      DROP TRIGGER tg_reservations_guard_fingerprint ON reservations;
      DROP FUNCTION reservations_guard_fingerprint();
      DROP INDEX uq_reservations_live_order;
      ALTER TABLE reservations DROP CONSTRAINT fk_reservations_order_owner;
      ALTER TABLE reservations DROP COLUMN request_fingerprint;
      DROP TABLE orders;
    `);
    // The functions as 0006 made them and 0009 replaced one (its up also drops this index again).
    await checkoutFunctions.up(params);
    await db.query(`CREATE INDEX ix_reservations_pending_order ON reservations (order_id) WHERE status = 'PENDING'`);
    await eventStateProbes.up(params);
  },
};

// apply_checkout_events of 0006, answering uq_reservations_live_order instead of failing.
const APPLY_CHECKOUT_EVENTS = `
      -- Each event: {key, source, eventId, type, orderId, reservationId, couponId, outcome
      -- (APPLIED | IGNORED | CONFLICT), reasonCode, detail, action (confirm | confirm-late | release |
      -- restore | none), endReason, at, expect {reservation, refunded, coupon, couponReservation}}.
      -- reservationId and couponId are null when no reservation matched. Outcomes: done (recorded and,
      -- unless the action is none, applied) | duplicate (the event was processed before: the row's
      -- changes are undone) | stale | uq_reservations_live_order (a confirm-late of an order that
      -- holds another live reservation: nothing changed, nothing recorded).
      CREATE OR REPLACE FUNCTION apply_checkout_events(events jsonb)
        RETURNS TABLE (key text, outcome text, reservation jsonb) LANGUAGE plpgsql AS $$
      #variable_conflict use_column
      DECLARE
        e jsonb;
        rid text;
        cid text;
        act text;
        ts timestamptz;
        exp_c text;
        exp_cr text;
        exp_r text;
        exp_rf boolean;
        x reservations%ROWTYPE;
        have_x boolean;
        refused_by text;
      BEGIN
        FOR e IN SELECT v.value FROM jsonb_array_elements(events) WITH ORDINALITY AS v(value, n)
                  ORDER BY v.value->>'couponId' NULLS FIRST, v.n LOOP
          key := e->>'key';
          reservation := NULL;
          have_x := false;
          rid := e->>'reservationId';
          cid := e->>'couponId';
          act := e->>'action';
          ts := (e->>'at')::timestamptz;
          exp_c := e->'expect'->>'coupon';
          exp_cr := e->'expect'->>'couponReservation';
          exp_r := e->'expect'->>'reservation';
          exp_rf := (e->'expect'->>'refunded')::boolean;
          BEGIN
            IF cid IS NOT NULL AND act <> 'none' THEN
              -- Compare-and-set, coupon row first: each UPDATE changes its row only if it is as the
              -- decision saw it.
              CASE act
                WHEN 'confirm', 'confirm-late' THEN
                  UPDATE coupons SET status = 'USED', used_at = ts, order_id = e->>'orderId', reservation_id = rid,
                                     reserved_at = COALESCE(reserved_at, ts)
                   WHERE id = cid AND status = exp_c AND reservation_id IS NOT DISTINCT FROM exp_cr;
                ELSE -- release, restore
                  UPDATE coupons SET status = 'ISSUED', reserved_at = NULL, used_at = NULL, order_id = NULL, reservation_id = NULL
                   WHERE id = cid AND status = exp_c AND reservation_id IS NOT DISTINCT FROM exp_cr;
              END CASE;
              IF NOT FOUND THEN RAISE EXCEPTION 'stale' USING ERRCODE = 'CK001'; END IF;
              CASE act
                WHEN 'confirm', 'confirm-late' THEN
                  UPDATE reservations SET status = 'CONFIRMED', ended_at = COALESCE(ended_at, ts), end_reason = e->>'endReason'
                   WHERE id = rid AND status = exp_r AND (refunded_at IS NOT NULL) = exp_rf RETURNING * INTO x;
                WHEN 'release' THEN
                  UPDATE reservations SET status = 'CANCELLED', ended_at = ts, end_reason = e->>'endReason'
                   WHERE id = rid AND status = exp_r AND (refunded_at IS NOT NULL) = exp_rf RETURNING * INTO x;
                ELSE -- restore
                  UPDATE reservations SET refunded_at = ts
                   WHERE id = rid AND status = exp_r AND (refunded_at IS NOT NULL) = exp_rf RETURNING * INTO x;
              END CASE;
              IF NOT FOUND THEN RAISE EXCEPTION 'stale' USING ERRCODE = 'CK001'; END IF;
              have_x := true;
            ELSIF cid IS NOT NULL THEN
              -- Decided to change nothing: still only on the rows as they are.
              PERFORM 1 FROM coupons WHERE id = cid AND status = exp_c AND reservation_id IS NOT DISTINCT FROM exp_cr FOR UPDATE;
              IF NOT FOUND THEN RAISE EXCEPTION 'stale' USING ERRCODE = 'CK001'; END IF;
              SELECT * INTO x FROM reservations WHERE id = rid AND status = exp_r AND (refunded_at IS NOT NULL) = exp_rf;
              IF NOT FOUND THEN RAISE EXCEPTION 'stale' USING ERRCODE = 'CK001'; END IF;
              have_x := true;
            END IF;
            INSERT INTO processed_events (source, event_id, type, order_id, reservation_id, outcome, reason_code, detail, processed_at)
            VALUES (e->>'source', e->>'eventId', e->>'type', e->>'orderId', rid, e->>'outcome', e->>'reasonCode', e->>'detail', ts)
            ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
              -- Processed before: undo this row's changes.
              RAISE EXCEPTION 'duplicate' USING ERRCODE = 'CK002';
            END IF;
            outcome := 'done';
            IF have_x THEN reservation := to_jsonb(x); END IF;
          EXCEPTION
            WHEN SQLSTATE 'CK001' THEN outcome := 'stale';
            WHEN SQLSTATE 'CK002' THEN outcome := 'duplicate';
            WHEN unique_violation THEN
              -- A late payment of an order that has taken another coupon since: the worker records it
              -- as a conflict. Any other refusal is a fault.
              GET STACKED DIAGNOSTICS refused_by = CONSTRAINT_NAME;
              IF refused_by IS DISTINCT FROM 'uq_reservations_live_order' THEN RAISE; END IF;
              outcome := refused_by;
          END;
          RETURN NEXT;
        END LOOP;
      END $$;
`;

// checkout_event_states of 0009 plus o_user, the owner of the event's order (null when nobody
// reserved on it), and an order's live reservation first. The return type changed: dropped and made anew.
const CHECKOUT_EVENT_STATES = `
      DROP FUNCTION checkout_event_states(jsonb);
      CREATE FUNCTION checkout_event_states(events jsonb)
        RETURNS TABLE (key text, done_outcome text, done_reason text, pending_for_order integer,
                       r_id text, r_status text, r_refunded boolean, r_user text, r_order text,
                       c_id text, c_status text, c_expires timestamptz, c_reservation text, restore_on_refund boolean,
                       o_user text)
        LANGUAGE plpgsql STABLE AS $$
      BEGIN
        RETURN QUERY
        SELECT e.key, pe.outcome, pe.reason_code, pending.n,
               r.id, r.status, r.refunded_at IS NOT NULL, r.user_id, r.order_id,
               c.id, c.status, c.expires_at::timestamptz, c.reservation_id, p.restore_on_refund,
               o.user_id
          FROM jsonb_to_recordset(events) AS e(key text, source text, "eventId" text, "reservationId" text, "orderId" text, "userId" text)
          -- One primary-key probe per event: the LIMIT keeps the subquery from becoming a join.
          LEFT JOIN LATERAL (SELECT x.outcome, x.reason_code FROM processed_events x
                              WHERE x.source = e.source AND x.event_id = e."eventId" LIMIT 1) pe ON true
          LEFT JOIN LATERAL (SELECT x.user_id FROM orders x WHERE x.order_id = e."orderId" LIMIT 1) o ON true
          -- The order's PENDING reservations (of the event's user, when it names one), counted only
          -- when the event names no reservation; 0 otherwise. More than one exists only in rows from
          -- before uq_reservations_live_order.
          LEFT JOIN LATERAL (SELECT (count(*) FILTER (WHERE y.status = 'PENDING'
                                                       AND (e."userId" IS NULL OR y.user_id = e."userId")))::integer AS n
                               FROM reservations y
                              WHERE e."reservationId" IS NULL AND y.order_id = e."orderId") pending ON true
          LEFT JOIN LATERAL (
            SELECT x.* FROM reservations x WHERE x.id = e."reservationId"
            UNION ALL
            (SELECT x.* FROM reservations x
              WHERE e."reservationId" IS NULL AND x.order_id = e."orderId" AND (e."userId" IS NULL OR x.user_id = e."userId")
              ORDER BY (x.status IN ('PENDING', 'CONFIRMED')) DESC, (x.status = 'PENDING') DESC, x.created_at DESC LIMIT 1)
          ) r ON true
          LEFT JOIN coupons c ON c.id = r.coupon_id
          LEFT JOIN coupon_policies p ON p.id = c.policy_id;
      END $$;
`;
