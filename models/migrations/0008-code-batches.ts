// A code generation batch that finished: its codes may have been handed out, so nothing may ever
// discard them (a rerun of a finished generation job answers from here instead of drawing anew).
import type { Migration } from './types';

export const createCodeBatches: Migration = {
  name: '0008-code-batches',
  async up({ context: db }) {
    await db.query(`
      CREATE TABLE code_batches (
        batch_id    text PRIMARY KEY,
        policy_id   text NOT NULL,
        count       integer NOT NULL,
        finished_at timestamptz(3) NOT NULL DEFAULT now(),
        CONSTRAINT fk_code_batches_policy FOREIGN KEY (policy_id) REFERENCES coupon_policies (id),
        CONSTRAINT ck_code_batches_count CHECK (count > 0)
      );
    `);
  },
  async down({ context: db }) {
    await db.query('DROP TABLE code_batches');
  },
};
