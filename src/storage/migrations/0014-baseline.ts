// The schema as the migrations 0001-0014 left it, squashed into one: tables, columns, constraints
// and indexes, in their final shape, spelled out in 0014-baseline.sql beside this file (read with the
// loader of the SQL files, ../sql-files.ts; `npm run build` copies it into dist). The functions and
// triggers are not here: they are the files of src/storage/sql/, applied after the versioned
// migrations (see ./index.ts).
//
// A database that ran 0001-0014 one by one already has all of this: the migrator records this
// migration as applied there without running it (src/storage/migrator.ts), and test/migrations.test.ts
// checks that such a database and a new one end up with the same schema.
import { readSqlFiles, SQL_FILES_TABLE } from '../sql-files';
import type { Migration } from './types';

/** The migrations squashed into this one, as schema_migrations lists them in a database that ran them. */
export const SQUASHED_MIGRATIONS = [
  '0001-coupon-policies',
  '0002-coupons',
  '0003-guard-status-and-limits',
  '0004-insert-issued-coupons',
  '0005-reservations',
  '0006-checkout-functions',
  '0007-coupon-codes',
  '0008-code-batches',
  '0009-event-state-probes',
  '0010-order-owners',
  '0011-policy-counters',
  '0012-code-delivery',
  '0013-event-inbox',
  '0014-inbox-without-order-index',
];

/** The schema's SQL, in this folder. */
const BASELINE_SQL = '0014-baseline.sql';

export const baseline: Migration = {
  name: '0014-baseline',
  async up({ context: db }) {
    const file = readSqlFiles(__dirname).find((f) => f.name === BASELINE_SQL);
    if (!file) throw new Error(`${BASELINE_SQL} is missing from ${__dirname} (npm run build copies it into dist)`);
    // One query string: Postgres runs it as one transaction.
    await db.query(file.text);
  },
  // Takes the functions of src/storage/sql/ along (the triggers go with their tables) and their
  // checksums, so the next migration applies the files again.
  async down({ context: db }) {
    await db.query(`
      DROP TABLE event_inbox, policy_counters, processed_events, reservations, orders, coupons,
                 code_batches, coupon_codes, coupon_policies;
      DROP FUNCTION apply_checkout_events(jsonb), checkout_event_states(jsonb), insert_issued_coupons(jsonb),
                    reserve_coupons(jsonb), policy_counters_add(text, bigint, bigint),
                    coupon_policies_guard_update(), coupon_policies_open_counters(), coupons_enforce_limits(),
                    coupons_guard_update(), coupons_guard_transition(), reservations_guard_update(),
                    reservations_guard_fingerprint(), coupons_count_inserts(), coupons_count_uses(),
                    coupons_count_deletes(), coupons_count_truncate();
      DROP TABLE IF EXISTS ${SQL_FILES_TABLE};
    `);
  },
};
