// policy_counters (src/storage/sql/policy_counters_add.sql, coupons_count.sql) in Postgres alone: a
// policy's counts are read without touching a coupon, every kind of write keeps them equal to the
// rows (bulk statements, the batched issue insert with refusals, deletes), and concurrent writers of
// one policy take different shards.
import { Client } from 'pg';
import { POLICY_COUNTS_SQL } from '../src/storage/policy';
import { freshDatabase } from './support/db';

let url: string;
let client: Client;

const COUPONS = 200_000;

async function policy(id: string, quantity: number | null = null): Promise<void> {
  await client.query(
    `INSERT INTO coupon_policies (id, name, discount_type, discount_value, issue_method, total_quantity, per_user_limit, issue_starts_at, valid_days)
     VALUES ($1, $1, 'FIXED', 1000, $2, $3, 1000, now() - interval '1 day', 7)`,
    [id, quantity === null ? 'DOWNLOAD' : 'FIRST_COME', quantity],
  );
}

/** The counters' answer and the rows' truth for one policy. */
async function countsOf(id: string) {
  const counted = await client.query<{ issued: string; used: string }>(POLICY_COUNTS_SQL, [[id]]);
  const real = await client.query<{ issued: string; used: string }>(
    "SELECT count(*) AS issued, count(*) FILTER (WHERE status = 'USED') AS used FROM coupons WHERE policy_id = $1",
    [id],
  );
  const c = counted.rows[0];
  const r = real.rows[0];
  return {
    counted: { issued: Number(c?.issued ?? 0), used: Number(c?.used ?? 0) },
    real: { issued: Number(r?.issued), used: Number(r?.used) },
  };
}

beforeAll(async () => {
  // Named after the test database, so runs against different test databases never share it.
  url = await freshDatabase(`${new URL(process.env.DATABASE_URL as string).pathname.slice(1)}_counters`);
  client = new Client({ connectionString: url });
  await client.connect();
  await policy('big');
  // One statement, counted once by the statement-level trigger. The per-user guard (an advisory lock
  // a row, more than one transaction may hold) stands aside for it in this database of its own.
  await client.query('ALTER TABLE coupons DISABLE TRIGGER tg_coupons_enforce_limits');
  await client.query(
    `INSERT INTO coupons (id, policy_id, user_id, request_id, expires_at)
                      SELECT 'b' || g, 'big', 'u' || g, 'bq' || g, now() + interval '7 days' FROM generate_series(1, $1::int) g`,
    [COUPONS],
  );
  await client.query('ALTER TABLE coupons ENABLE TRIGGER tg_coupons_enforce_limits');
  // And a catalogue of a thousand other policies, as a deployment has after a while.
  await client.query(`INSERT INTO coupon_policies (id, name, discount_type, discount_value, issue_method, issue_starts_at, valid_days)
                      SELECT 'other-' || g, 'other', 'FIXED', 1000, 'DOWNLOAD', now(), 7 FROM generate_series(1, 1000) g`);
  await client.query('ANALYZE coupons, policy_counters');
});

afterAll(async () => {
  await client?.end();
});

describe('policy_counters', () => {
  it("reads a policy's counts from its counter shards, without reading a coupon", async () => {
    expect(await countsOf('big')).toEqual({ counted: { issued: COUPONS, used: 0 }, real: { issued: COUPONS, used: 0 } });

    const plan = await client.query<{ 'QUERY PLAN': unknown }>(`EXPLAIN (FORMAT JSON) ${POLICY_COUNTS_SQL}`, [['big']]);
    const relations = JSON.stringify(plan.rows[0]?.['QUERY PLAN']).match(/"Relation Name":"\w+"/g);
    expect(relations).toEqual(['"Relation Name":"policy_counters"']);

    // What the read does, from this backend's own statistics, within one transaction.
    const stats = async () =>
      new Map(
        (
          await client.query<{ relname: string; seq_scan: string; idx_scan: string; idx_tup_fetch: string }>(
            "SELECT relname, seq_scan, COALESCE(idx_scan, 0) AS idx_scan, COALESCE(idx_tup_fetch, 0) AS idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname IN ('coupons', 'policy_counters')",
          )
        ).rows.map((r) => [r.relname, { seq: Number(r.seq_scan), idx: Number(r.idx_scan), fetched: Number(r.idx_tup_fetch) }]),
      );
    await client.query('BEGIN');
    try {
      const before = await stats();
      await client.query(POLICY_COUNTS_SQL, [['big']]);
      const after = await stats();
      const delta = (rel: string, k: 'seq' | 'idx' | 'fetched') => (after.get(rel)?.[k] ?? 0) - (before.get(rel)?.[k] ?? 0);
      expect({ seq: delta('coupons', 'seq'), idx: delta('coupons', 'idx') }).toEqual({ seq: 0, idx: 0 });
      expect(delta('policy_counters', 'seq')).toBe(0);
      expect(delta('policy_counters', 'fetched')).toBeLessThanOrEqual(8);
    } finally {
      await client.query('ROLLBACK');
    }
  });

  it('stays equal to the rows through bulk updates, deletes and the batched issue insert with refusals', async () => {
    await policy('bulk', 5);
    await client.query(`INSERT INTO coupons (id, policy_id, user_id, slot, request_id, expires_at)
                        SELECT 'k' || g, 'bulk', 'ku' || g, g, 'kq' || g, now() + interval '7 days' FROM generate_series(1, 3) g`);
    expect(await countsOf('bulk')).toEqual({ counted: { issued: 3, used: 0 }, real: { issued: 3, used: 0 } });

    // Three requests of one batch: one inserted, one over the quantity, one a taken slot.
    const now = new Date().toISOString();
    const later = new Date(Date.now() + 86_400_000).toISOString();
    const batch = [4, 9, 1].map((slot, i) => ({
      id: `kb${i}`,
      policyId: 'bulk',
      userId: `kbu${i}`,
      slot,
      requestId: `kbq${i}`,
      issuedAt: now,
      expiresAt: later,
    }));
    const outcomes = await client.query<{ outcome: string }>('SELECT outcome FROM insert_issued_coupons($1::jsonb)', [
      JSON.stringify(batch),
    ]);
    expect(outcomes.rows.map((r) => r.outcome).sort()).toEqual(['ck_coupons_slot_within_quantity', 'inserted', 'uq_coupons_policy_slot']);
    expect(await countsOf('bulk')).toEqual({ counted: { issued: 4, used: 0 }, real: { issued: 4, used: 0 } });
    // The trigger counts again after the batch: the function stood it aside only while it ran.
    await client.query(
      `INSERT INTO coupons (id, policy_id, user_id, slot, request_id, expires_at) VALUES ('k5', 'bulk', 'ku5', 5, 'kq5', now() + interval '7 days')`,
    );
    expect((await countsOf('bulk')).counted.issued).toBe(5);

    // Two used by one statement, one back by a refund, one expired, then one deleted.
    await client.query(
      `UPDATE coupons SET status = 'USED', used_at = now(), order_id = 'o-' || id, reservation_id = 'r-' || id WHERE id IN ('k1', 'k2')`,
    );
    expect(await countsOf('bulk')).toEqual({ counted: { issued: 5, used: 2 }, real: { issued: 5, used: 2 } });
    await client.query(`UPDATE coupons SET status = 'ISSUED', used_at = NULL, order_id = NULL, reservation_id = NULL WHERE id = 'k2'`);
    await client.query(`UPDATE coupons SET status = 'EXPIRED' WHERE id = 'k3'`);
    expect(await countsOf('bulk')).toEqual({ counted: { issued: 5, used: 1 }, real: { issued: 5, used: 1 } });
    await client.query(`DELETE FROM coupons WHERE id IN ('k1', 'k5')`);
    expect(await countsOf('bulk')).toEqual({ counted: { issued: 3, used: 0 }, real: { issued: 3, used: 0 } });
  });

  it('counts what one apply_checkout_events call takes into or out of USED once, and nothing of an undone or stale event', async () => {
    await policy('pay-a');
    await policy('pay-b');
    await client.query(`INSERT INTO coupons (id, policy_id, user_id, request_id, expires_at)
                        VALUES ('pa1', 'pay-a', 'upa1', 'qa1', now() + interval '7 days'), ('pa2', 'pay-a', 'upa2', 'qa2', now() + interval '7 days'),
                               ('pa3', 'pay-a', 'upa3', 'qa3', now() + interval '7 days'), ('pb1', 'pay-b', 'upb1', 'qb1', now() + interval '7 days')`);
    const at = new Date().toISOString();
    const reserves = ['pa1', 'pa2', 'pa3', 'pb1'].map((c) => ({
      req: `rq-${c}`,
      id: `r-${c}`,
      coupon: c,
      user: `u${c}`,
      order: `o-${c}`,
      amount: 10_000,
      discount: 1_000,
      fingerprint: `f-${c}`,
      at,
      expires: new Date(Date.now() + 900_000).toISOString(),
    }));
    const reserved = await client.query<{ outcome: string }>('SELECT outcome FROM reserve_coupons($1::jsonb)', [JSON.stringify(reserves)]);
    expect(reserved.rows.map((r) => r.outcome)).toEqual(['reserved', 'reserved', 'reserved', 'reserved']);
    // An event recorded before, whose redelivery below changes a3 and is then undone.
    await client.query(`INSERT INTO processed_events (source, event_id, type, order_id, outcome, processed_at)
                        VALUES ('payments', 'e-old', 'PAYMENT_COMPLETED', 'o-pa3', 'APPLIED', now())`);

    const event = (key: string, eventId: string, c: string, action: string, expect: object) => ({
      key,
      source: 'payments',
      eventId,
      type: action === 'restore' ? 'PAYMENT_REFUNDED' : 'PAYMENT_COMPLETED',
      orderId: `o-${c}`,
      reservationId: `r-${c}`,
      couponId: c,
      outcome: 'APPLIED',
      reasonCode: null,
      detail: null,
      action,
      endReason: 'PAYMENT_COMPLETED',
      at,
      expect,
    });
    const pending = (c: string) => ({ reservation: 'PENDING', refunded: false, coupon: 'RESERVED', couponReservation: `r-${c}` });
    const apply = async (events: object[]) =>
      (
        await client.query<{ key: string; outcome: string }>('SELECT key, outcome FROM apply_checkout_events($1::jsonb)', [
          JSON.stringify(events),
        ])
      ).rows;

    expect(
      await apply([
        event('k1', 'e1', 'pa1', 'confirm', pending('pa1')),
        event('k2', 'e2', 'pa2', 'confirm', pending('pa2')),
        event('k3', 'e3', 'pb1', 'confirm', pending('pb1')),
        event('k4', 'e-old', 'pa3', 'confirm', pending('pa3')),
        event('k5', 'e5', 'pa3', 'confirm', { ...pending('pa3'), coupon: 'ISSUED' }),
      ]),
    ).toEqual([
      { key: 'k1', outcome: 'done' },
      { key: 'k2', outcome: 'done' },
      { key: 'k4', outcome: 'duplicate' },
      { key: 'k5', outcome: 'stale' },
      { key: 'k3', outcome: 'done' },
    ]);
    expect(await countsOf('pay-a')).toEqual({ counted: { issued: 3, used: 2 }, real: { issued: 3, used: 2 } });
    expect(await countsOf('pay-b')).toEqual({ counted: { issued: 1, used: 1 }, real: { issued: 1, used: 1 } });

    // A refund that restores takes one back out of USED; the row trigger counts again after the call.
    const confirmed = { reservation: 'CONFIRMED', refunded: false, coupon: 'USED', couponReservation: 'r-pa1' };
    expect(await apply([event('k6', 'e6', 'pa1', 'restore', confirmed)])).toEqual([{ key: 'k6', outcome: 'done' }]);
    expect(await countsOf('pay-a')).toEqual({ counted: { issued: 3, used: 1 }, real: { issued: 3, used: 1 } });
    await client.query(`UPDATE coupons SET status = 'USED', used_at = now(), order_id = 'o-x', reservation_id = 'r-x' WHERE id = 'pa1'`);
    expect(await countsOf('pay-a')).toEqual({ counted: { issued: 3, used: 2 }, real: { issued: 3, used: 2 } });
  });

  it('gives concurrent writers of one policy different shards: eight open transactions, none waits', async () => {
    await policy('busy');
    const writers = await Promise.all(
      Array.from({ length: 8 }, async () => {
        const c = new Client({ connectionString: url });
        await c.connect();
        return c;
      }),
    );
    try {
      // Each holds its shard until the end; a writer that had to wait would fail on lock_timeout.
      for (const [i, w] of writers.entries()) {
        await w.query("BEGIN; SET LOCAL lock_timeout = '2s'");
        await w.query(
          `INSERT INTO coupons (id, policy_id, user_id, request_id, expires_at) VALUES ($1, 'busy', $1, $1, now() + interval '7 days')`,
          [`busy-${i}`],
        );
      }
      await Promise.all(writers.map((w) => w.query('COMMIT')));
      const shards = await client.query<{ shard: number; issued: string }>(
        "SELECT shard, issued FROM policy_counters WHERE policy_id = 'busy' ORDER BY shard",
      );
      expect(shards.rows.map((r) => Number(r.issued))).toEqual([1, 1, 1, 1, 1, 1, 1, 1]);
      expect(await countsOf('busy')).toEqual({ counted: { issued: 8, used: 0 }, real: { issued: 8, used: 0 } });
    } finally {
      await Promise.all(writers.map((w) => w.end()));
    }
  });
});
