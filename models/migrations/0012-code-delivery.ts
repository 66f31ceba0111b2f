// Generated codes are handed out from Postgres, not Redis. A finished batch keeps its codes sealed
// (AES-256-GCM under a key derived from CODE_HMAC_SECRET, models/codes.ts) in the same row, written
// in the same transaction that marks the batch finished: a batch is never "finished" without its
// codes stored durably. The owner's first read takes them out (sealed_codes set to NULL, delivered_at
// set); codes nobody fetched are dropped after a day. Before, the codes waited in a Redis key written
// after the batch was sealed: a Redis that restarted without it answered `codesDelivered: true` for
// codes nobody had.
import type { Migration } from './types';

export const codeDelivery: Migration = {
  name: '0012-code-delivery',
  async up({ context: db }) {
    await db.query(`
      ALTER TABLE code_batches
        ADD COLUMN sealed_codes bytea,
        ADD COLUMN delivered_at timestamptz(3);
    `);
  },
  async down({ context: db }) {
    await db.query('ALTER TABLE code_batches DROP COLUMN sealed_codes, DROP COLUMN delivered_at');
  },
};
