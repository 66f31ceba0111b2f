-- 0014-baseline: the schema as the migrations 0001-0014 left it, squashed into one: tables, columns,
-- constraints and indexes, in their final shape. Run once, as one query string (so one transaction),
-- by src/storage/migrations/0014-baseline.ts on a new database. The functions and triggers are not
-- here: they are the files of src/storage/sql/, applied after the versioned migrations.
--
-- Columns added by a later migration of the old series come last in their table (coupons.code_hash,
-- reservations.request_fingerprint, coupon_policies.restore_on_refund), so a new database lays its
-- rows out like an old one. The history of each choice (which migration, why, measured how) is in
-- the git history of src/storage/migrations/ up to this squash.

-- Coupon policies: the rules a marketer sets. Checks mirror the domain rules so a bad row cannot exist.
-- The update guard (src/storage/sql/coupon_policies_guard_update.sql) keeps quantities and limits growing.
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
  -- Whether a refund gives the coupon back (when it is still valid).
  restore_on_refund   boolean NOT NULL DEFAULT true,
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

-- Single-use coupon codes. Only a keyed hash (HMAC-SHA256 with CODE_HMAC_SECRET) of each code is
-- stored, so a leaked table gives no usable code. A coupon redeemed with a code carries its hash:
-- uq_coupons_code_hash lets each code be used by one coupon, and the composite foreign key
-- fk_coupons_code lets a code only ever issue its own policy's coupons.
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

-- A code generation batch that finished: its codes may have been handed out, so nothing may ever
-- discard them (a rerun of a finished generation job answers from here instead of drawing anew).
-- Its codes wait here sealed (AES-256-GCM under a key derived from CODE_HMAC_SECRET,
-- src/storage/codes.ts), written in the same transaction that marks the batch finished; the owner's
-- first read takes them out (sealed_codes set to NULL, delivered_at set); codes nobody fetched
-- are dropped after a day.
CREATE TABLE code_batches (
  batch_id     text PRIMARY KEY,
  policy_id    text NOT NULL,
  count        integer NOT NULL,
  finished_at  timestamptz(3) NOT NULL DEFAULT now(),
  sealed_codes bytea,
  delivered_at timestamptz(3),
  CONSTRAINT fk_code_batches_policy FOREIGN KEY (policy_id) REFERENCES coupon_policies (id),
  CONSTRAINT ck_code_batches_count CHECK (count > 0)
);

-- Coupons held by users. The database is the last guard of I1 (slot within quantity, one coupon
-- per slot) and I2 (per-user limit), whatever Redis decided: see src/storage/sql/coupons_enforce_limits.sql.
CREATE TABLE coupons (
  id             text PRIMARY KEY,
  policy_id      text NOT NULL,
  user_id        text NOT NULL,
  status         text NOT NULL DEFAULT 'ISSUED',
  -- The stock unit this coupon took (1..total_quantity); NULL for unlimited policies.
  slot           integer,
  -- The issue request (job) that created it: a rerun of the job finds its coupon instead of making another.
  request_id     text NOT NULL,
  issued_at      timestamptz(3) NOT NULL DEFAULT now(),
  expires_at     timestamptz(3) NOT NULL,
  reserved_at    timestamptz(3),
  used_at        timestamptz(3),
  order_id       text,
  reservation_id text,
  created_at     timestamptz(3) NOT NULL DEFAULT now(),
  updated_at     timestamptz(3) NOT NULL DEFAULT now(),
  -- The hash of the single-use code it was redeemed with.
  code_hash      text,
  CONSTRAINT fk_coupons_policy FOREIGN KEY (policy_id) REFERENCES coupon_policies (id),
  CONSTRAINT fk_coupons_code FOREIGN KEY (code_hash, policy_id) REFERENCES coupon_codes (code_hash, policy_id),
  CONSTRAINT ck_coupons_status CHECK (status IN ('ISSUED', 'RESERVED', 'USED', 'EXPIRED')),
  CONSTRAINT ck_coupons_slot CHECK (slot IS NULL OR slot >= 1),
  CONSTRAINT ck_coupons_user CHECK (length(user_id) BETWEEN 1 AND 128),
  -- A reserved or used coupon names its reservation and order; an issued or expired one neither.
  CONSTRAINT ck_coupons_held CHECK (
    (status IN ('RESERVED', 'USED')) = (reservation_id IS NOT NULL AND order_id IS NOT NULL)),
  CONSTRAINT uq_coupons_policy_slot UNIQUE (policy_id, slot),
  CONSTRAINT uq_coupons_request UNIQUE (request_id)
)
-- Checkout updates a coupon twice (RESERVED, then USED). With no index on status, and with room
-- left in each page, Postgres updates the row in place (HOT: no index entries, less WAL and
-- vacuum). Counting a policy's coupons by status walks the policy's rows through
-- ix_coupons_policy_user.
WITH (fillfactor = 85);

-- GET /coupons/users/:userId pages newest first with a (issued_at, id) cursor.
CREATE INDEX ix_coupons_user_issued ON coupons (user_id, issued_at DESC, id DESC);
-- The per-user limit check and the rebuild of per-user counts.
CREATE INDEX ix_coupons_policy_user ON coupons (policy_id, user_id);
CREATE UNIQUE INDEX uq_coupons_code_hash ON coupons (code_hash) WHERE code_hash IS NOT NULL;

-- Orders (I10): an order belongs to the user who first reserved on it. reserve_coupons writes the
-- row with the reservation, in the same subtransaction, and a reservation's (order_id, user_id)
-- is a foreign key to it (fk_reservations_order_owner): nobody else can reserve under the order.
CREATE TABLE orders (
  order_id   text NOT NULL,
  user_id    text NOT NULL,
  created_at timestamptz(3) NOT NULL DEFAULT now(),
  CONSTRAINT pk_orders PRIMARY KEY (order_id),
  -- The target of fk_reservations_order_owner.
  CONSTRAINT uq_orders_owner UNIQUE (order_id, user_id)
);

-- Checkout: reservations of coupons for orders. Postgres is the last guard of I4 (one PENDING
-- reservation and one live use per coupon, legal state changes only) and I10 (one live coupon
-- per order, reserved by the order's owner). reserve_coupons and apply_checkout_events write it.
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
  -- I8: the digest of the reserve body (couponId, orderId, orderAmount) under its Idempotency-Key,
  -- so another body under a key that reserved is told apart from a replay by Postgres alone,
  -- whatever Redis remembers. Rows from before it existed have none; their own columns are the body.
  request_fingerprint text,
  CONSTRAINT fk_reservations_coupon FOREIGN KEY (coupon_id) REFERENCES coupons (id),
  CONSTRAINT fk_reservations_order_owner FOREIGN KEY (order_id, user_id) REFERENCES orders (order_id, user_id),
  CONSTRAINT ck_reservations_status CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED', 'EXPIRED')),
  CONSTRAINT ck_reservations_amounts CHECK (order_amount >= 0 AND discount_amount >= 0 AND discount_amount <= order_amount),
  CONSTRAINT ck_reservations_ended CHECK ((status = 'PENDING') = (ended_at IS NULL)),
  CONSTRAINT ck_reservations_refund CHECK (refunded_at IS NULL OR status = 'CONFIRMED'),
  CONSTRAINT uq_reservations_request UNIQUE (request_id)
);

-- I4: at most one PENDING reservation, and at most one unrefunded use, per coupon.
CREATE UNIQUE INDEX uq_reservations_pending_coupon ON reservations (coupon_id) WHERE status = 'PENDING';
CREATE UNIQUE INDEX uq_reservations_used_coupon ON reservations (coupon_id) WHERE status = 'CONFIRMED' AND refunded_at IS NULL;
-- I10: one live coupon per order (no coupon stacking). A reservation that ended (CANCELLED,
-- EXPIRED) frees the order for another.
CREATE UNIQUE INDEX uq_reservations_live_order ON reservations (order_id) WHERE status IN ('PENDING', 'CONFIRMED');
-- The timeout sweeper reads PENDING reservations in expiry order.
CREATE INDEX ix_reservations_pending_expiry ON reservations (expires_at) WHERE status = 'PENDING';
-- Payment events name the order; an order's newest reservation comes first. Its PENDING
-- reservations are counted over this index too (checkout_event_states): a partial index on
-- PENDING would let a plan walk every PENDING row of the table.
CREATE INDEX ix_reservations_order ON reservations (order_id, created_at DESC);

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

-- Each policy's issuedCount and usedCount, kept by the writes to coupons (src/storage/sql/
-- policy_counters_add.sql and coupons_count.sql), so a policy read costs a few index probes
-- instead of a pass over the policy's coupons. 8 rows (shards) per policy, made with the policy;
-- a read sums them.
CREATE TABLE policy_counters (
  policy_id text NOT NULL,
  shard     smallint NOT NULL,
  issued    bigint NOT NULL DEFAULT 0,
  used      bigint NOT NULL DEFAULT 0,
  CONSTRAINT pk_policy_counters PRIMARY KEY (policy_id, shard),
  CONSTRAINT fk_policy_counters_policy FOREIGN KEY (policy_id) REFERENCES coupon_policies (id),
  CONSTRAINT ck_policy_counters_shard CHECK (shard BETWEEN 0 AND 7)
) WITH (fillfactor = 50); -- room on the page for in-place (HOT) updates of the counts

-- I11: an event the bridge accepted from Kafka is never lost, even when Redis loses its jobs.
-- The bridge writes every event of a Kafka batch here, in one statement, before it adds the jobs
-- and before the offset moves; a row stays until its event has been applied, and the worker's
-- inbox sweep adds again the job of any row whose job Redis no longer has (src/usecases/inbox-sweep.ts).
-- Applied means: payments: processed_events has (source, event_id); user events: the worker
-- deleted the row once every request of the event was final. Rows live seconds, and each index
-- costs an insert and a delete per event on the checkout path: the primary key and the
-- event's unique key are the only ones (a refund asking about its order's earlier events scans).
CREATE TABLE event_inbox (
  -- Insertion order: the order of a partition's events, which redrives keep.
  seq         bigint GENERATED ALWAYS AS IDENTITY,
  -- processed_events.source of the event ('payments'), or 'user-events'.
  source      text NOT NULL,
  event_id    text NOT NULL,
  -- The job exactly as the bridge added it: the deployment's queues (QUEUE_PREFIX; each
  -- deployment sweeps its own rows), kind (src/queues/names.ts JOB_KINDS), id and data.
  queue_prefix text NOT NULL,
  job_kind    text NOT NULL,
  job_id      text NOT NULL,
  job_data    jsonb NOT NULL,
  -- The payment's order: a refund waits while an earlier event of its order is not applied.
  order_id    text,
  received_at timestamptz(3) NOT NULL DEFAULT now(),
  CONSTRAINT pk_event_inbox PRIMARY KEY (seq),
  CONSTRAINT uq_event_inbox_event UNIQUE (source, event_id)
);
