// Each policy's issuedCount and usedCount, kept by the writes to coupons, so a policy read costs a
// few index probes instead of a pass over the policy's coupons (a million of them took a
// connection for seconds, and ten users polling a sale page exhausted the web's pool).
//
// - policy_counters holds 8 rows per policy (shards, made with the policy); a read sums them. A
//   write adds its delta to the first shard no other transaction holds (FOR UPDATE SKIP LOCKED,
//   starting at the backend's own, pg_backend_pid() % 8), so up to 8 concurrent writers of one
//   policy never queue on a hot row, and two transactions never wait on each other's shards (no
//   lock-order deadlock across policies). Only when all 8 are held does a writer wait for its own.
// - Inserts: a statement-level trigger over the statement's transition table, one delta per policy
//   per statement, so a bulk INSERT ... SELECT costs one counter write. insert_issued_coupons (the
//   issue path) inserts row by row in subtransactions, to give each row its own outcome: it counts
//   its inserted rows once at its end instead (the trigger stands aside while it runs), so a batch
//   of a hundred coupons is one counter write, taken just before the commit.
// - Updates: a row-level trigger whose WHEN clause lets only a change into or out of USED through
//   (checkout's confirm, a late payment, a refund that restores). The clause is evaluated without
//   calling a function, so a reserve, a release or a timeout sweep costs nothing; a statement-level
//   trigger with transition tables would run on every checkout UPDATE (one row each) and measured
//   17-47 us a statement against 0 (and 26 us for a change of USED).
// - Deletes and TRUNCATE (the API never does either) keep the counters right too.
// Existing coupons are counted once, under a lock that holds writers off while the triggers appear.
import type { Migration } from './types';

export const policyCounters: Migration = {
  name: '0011-policy-counters',
  async up({ context: db }) {
    // One query string: Postgres runs it as one transaction.
    await db.query(`
      LOCK TABLE coupons IN SHARE ROW EXCLUSIVE MODE;

      CREATE TABLE policy_counters (
        policy_id text NOT NULL,
        shard     smallint NOT NULL,
        issued    bigint NOT NULL DEFAULT 0,
        used      bigint NOT NULL DEFAULT 0,
        CONSTRAINT pk_policy_counters PRIMARY KEY (policy_id, shard),
        CONSTRAINT fk_policy_counters_policy FOREIGN KEY (policy_id) REFERENCES coupon_policies (id),
        CONSTRAINT ck_policy_counters_shard CHECK (shard BETWEEN 0 AND 7)
      ) WITH (fillfactor = 50); -- room on the page for in-place (HOT) updates of the counts

      -- Every policy starts with its 8 shards, so up to 8 concurrent writers each find one free.
      CREATE FUNCTION coupon_policies_open_counters() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        INSERT INTO policy_counters (policy_id, shard) SELECT NEW.id, s FROM generate_series(0, 7) AS s;
        RETURN NULL;
      END $$;
      CREATE TRIGGER tg_coupon_policies_open_counters AFTER INSERT ON coupon_policies
        FOR EACH ROW EXECUTE FUNCTION coupon_policies_open_counters();

      CREATE FUNCTION policy_counters_add(p text, d_issued bigint, d_used bigint) RETURNS void LANGUAGE plpgsql AS $$
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

      CREATE FUNCTION coupons_count_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
      DECLARE
        d record;
      BEGIN
        IF current_setting('coupons.counted_by_caller', true) = 'on' THEN
          RETURN NULL;
        END IF;
        FOR d IN SELECT policy_id, count(*) AS n, count(*) FILTER (WHERE status = 'USED') AS u
                   FROM inserted_rows GROUP BY policy_id ORDER BY policy_id LOOP
          PERFORM policy_counters_add(d.policy_id, d.n, d.u);
        END LOOP;
        RETURN NULL;
      END $$;
      CREATE TRIGGER tg_coupons_count_inserts AFTER INSERT ON coupons REFERENCING NEW TABLE AS inserted_rows
        FOR EACH STATEMENT EXECUTE FUNCTION coupons_count_inserts();

      CREATE FUNCTION coupons_count_uses() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        PERFORM policy_counters_add(NEW.policy_id, 0, CASE WHEN NEW.status = 'USED' THEN 1 ELSE -1 END);
        RETURN NULL;
      END $$;
      CREATE TRIGGER tg_coupons_count_uses AFTER UPDATE OF status ON coupons
        FOR EACH ROW WHEN ((OLD.status = 'USED') <> (NEW.status = 'USED')) EXECUTE FUNCTION coupons_count_uses();

      CREATE FUNCTION coupons_count_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
      DECLARE
        d record;
      BEGIN
        FOR d IN SELECT policy_id, count(*) AS n, count(*) FILTER (WHERE status = 'USED') AS u
                   FROM deleted_rows GROUP BY policy_id ORDER BY policy_id LOOP
          PERFORM policy_counters_add(d.policy_id, -d.n, -d.u);
        END LOOP;
        RETURN NULL;
      END $$;
      CREATE TRIGGER tg_coupons_count_deletes AFTER DELETE ON coupons REFERENCING OLD TABLE AS deleted_rows
        FOR EACH STATEMENT EXECUTE FUNCTION coupons_count_deletes();

      CREATE FUNCTION coupons_count_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        UPDATE policy_counters SET issued = 0, used = 0;
        RETURN NULL;
      END $$;
      CREATE TRIGGER tg_coupons_count_truncate AFTER TRUNCATE ON coupons
        FOR EACH STATEMENT EXECUTE FUNCTION coupons_count_truncate();

      -- As in 0007, counting its inserted rows once, per policy in policy order, at its end.
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

      INSERT INTO policy_counters (policy_id, shard) SELECT p.id, s FROM coupon_policies p, generate_series(0, 7) AS s;
      UPDATE policy_counters k SET issued = c.issued, used = c.used
        FROM (SELECT policy_id, count(*) AS issued, count(*) FILTER (WHERE status = 'USED') AS used FROM coupons GROUP BY policy_id) c
       WHERE k.policy_id = c.policy_id AND k.shard = 0;
    `);
  },
  async down({ context: db }) {
    // insert_issued_coupons as 0007 left it.
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
      DROP TRIGGER tg_coupons_count_truncate ON coupons;
      DROP TRIGGER tg_coupons_count_deletes ON coupons;
      DROP TRIGGER tg_coupons_count_uses ON coupons;
      DROP TRIGGER tg_coupons_count_inserts ON coupons;
      DROP FUNCTION coupons_count_truncate();
      DROP FUNCTION coupons_count_deletes();
      DROP FUNCTION coupons_count_uses();
      DROP FUNCTION coupons_count_inserts();
      DROP FUNCTION policy_counters_add(text, bigint, bigint);
      DROP TRIGGER tg_coupon_policies_open_counters ON coupon_policies;
      DROP FUNCTION coupon_policies_open_counters();
      DROP TABLE policy_counters;
    `);
  },
};
