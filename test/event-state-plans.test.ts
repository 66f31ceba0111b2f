// The read every payment event starts with (checkout_event_states) stays a handful of index probes
// per event, whatever the tables hold and whatever the planner believes they hold: no scan of
// processed_events (which only grows) and no walk over every PENDING reservation. Each would make
// every event cost more as the sale goes on; both were measured in the checkout benchmark.
import { Client } from 'pg';
import { freshDatabase } from './support/db';

let client: Client;

const HISTORY = 20_000; // events already processed, each with its CONFIRMED reservation and USED coupon
const PENDING = 300; // reservations in flight when the events arrive
const COUPONS = HISTORY + PENDING + 2; // and two coupons reserved one after the other under one order id

beforeAll(async () => {
  client = new Client({ connectionString: await freshDatabase('coupons_test_plans') });
  await client.connect();
  await client.query(`INSERT INTO coupon_policies (id, name, discount_type, discount_value, issue_method, issue_starts_at, valid_days)
                      VALUES ('plans', 'plans', 'FIXED', 1000, 'DOWNLOAD', now() - interval '1 day', 7)`);
  // In slices: each coupon row takes a per-user advisory lock, and one transaction holds only so many.
  for (let from = 1; from <= COUPONS; from += 2_000) {
    await client.query(
      `INSERT INTO coupons (id, policy_id, user_id, request_id, expires_at)
                        SELECT 'c' || g, 'plans', 'u' || g, 'q' || g, now() + interval '7 days' FROM generate_series($1::int, $2::int) g`,
      [from, Math.min(COUPONS, from + 1_999)],
    );
  }
  // Every order's owner: the user who reserved on it.
  await client.query(`INSERT INTO orders (order_id, user_id) SELECT 'o' || g, 'u' || g FROM generate_series(1, $1::int) g`, [
    HISTORY + PENDING,
  ]);
  await client.query(`INSERT INTO orders (order_id, user_id) VALUES ('o-two', 'ua')`);
  await client.query(
    `INSERT INTO reservations (id, coupon_id, user_id, order_id, order_amount, discount_amount, request_id, status, expires_at, ended_at, end_reason)
                      SELECT 'r' || g, 'c' || g, 'u' || g, 'o' || g, 50000, 1000, 'rq' || g, 'CONFIRMED', now(), now(), 'PAYMENT_COMPLETED'
                        FROM generate_series(1, $1::int) g`,
    [HISTORY],
  );
  await client.query(
    `INSERT INTO processed_events (source, event_id, type, order_id, reservation_id, outcome)
                      SELECT 'payments', 'e' || g, 'PAYMENT_COMPLETED', 'o' || g, 'r' || g, 'APPLIED' FROM generate_series(1, $1::int) g`,
    [HISTORY],
  );
  // Statistics from before the sale: no reservation was PENDING when they were taken.
  await client.query('ANALYZE coupons, reservations, processed_events, orders');
  await client.query(
    `INSERT INTO reservations (id, coupon_id, user_id, order_id, order_amount, discount_amount, request_id, expires_at)
                      SELECT 'r' || g, 'c' || g, 'u' || g, 'o' || g, 50000, 1000, 'rq' || g, now() + interval '10 minutes'
                        FROM generate_series($1::int + 1, $1::int + $2::int) g`,
    [HISTORY, PENDING],
  );
  // An order whose first reservation timed out and whose second is PENDING, both by its owner.
  await client.query(
    `INSERT INTO reservations (id, coupon_id, user_id, order_id, order_amount, discount_amount, request_id, status, expires_at, ended_at, end_reason, created_at)
                      VALUES ('r-two-a', 'c' || $1::int, 'ua', 'o-two', 50000, 1000, 'rq-two-a', 'EXPIRED', now(), now(), 'TIMEOUT', now() - interval '1 minute'),
                             ('r-two-b', 'c' || $1::int + 1, 'ua', 'o-two', 50000, 1000, 'rq-two-b', 'PENDING', now() + interval '10 minutes', NULL, NULL, now())`,
    [HISTORY + PENDING + 1],
  );
});

afterAll(async () => {
  await client?.end();
});

interface Counts {
  relname: string;
  seq_scan: string;
  idx_tup_fetch: string;
}

/** One row of checkout_event_states. */
interface EventState {
  key: string;
  done_outcome: string | null;
  pending_for_order: number;
  r_id: string | null;
  r_status: string | null;
  c_status: string | null;
  o_user: string | null;
}

/** What the call did to one table: its sequential scans and the rows its index scans fetched. */
interface TableReads {
  relname: string;
  seqScans: number;
  fetched: number;
}

/**
 * As a worker's turn sends them: events for in-flight orders (by order, as most payment systems
 * send them), redeliveries of processed ones, and events that name their reservation.
 */
function workerTurnEvents() {
  return [
    ...Array.from({ length: 20 }, (_, i) => ({
      key: `new-${i}`,
      source: 'payments',
      eventId: `n${i}`,
      reservationId: null,
      orderId: `o${HISTORY + 1 + i}`,
      userId: null,
    })),
    ...Array.from({ length: 20 }, (_, i) => ({
      key: `old-${i}`,
      source: 'payments',
      eventId: `e${i * 997 + 1}`,
      reservationId: null,
      orderId: `o${i * 997 + 1}`,
      userId: `u${i * 997 + 1}`,
    })),
    ...Array.from({ length: 10 }, (_, i) => ({
      key: `named-${i}`,
      source: 'payments',
      eventId: `m${i}`,
      reservationId: `r${HISTORY + 100 + i}`,
      orderId: `o${HISTORY + 100 + i}`,
      userId: null,
    })),
    // An order with an ended and a PENDING reservation: the PENDING one, none for a user who does
    // not own the order (the worker records that as a conflict), the ended one when named.
    { key: 'two', source: 'payments', eventId: 't1', reservationId: null, orderId: 'o-two', userId: null },
    { key: 'two-by-user', source: 'payments', eventId: 't2', reservationId: null, orderId: 'o-two', userId: 'ub' },
    { key: 'two-named', source: 'payments', eventId: 't3', reservationId: 'r-two-a', orderId: 'o-two', userId: null },
  ];
}

/**
 * checkout_event_states over `events`, and what the call read of each table. pg_stat_xact_user_tables
 * counts what this backend did that is not yet reported, earlier transactions included: the call's
 * share is the difference across it, within one transaction (rolled back).
 */
async function eventStatesWithReads(events: object[]): Promise<{ rows: EventState[]; counts: TableReads[] }> {
  const readCounts = async () =>
    (
      await client.query<Counts>(
        "SELECT relname, seq_scan, idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname IN ('processed_events', 'reservations', 'coupons', 'orders')",
      )
    ).rows;
  await client.query('BEGIN');
  try {
    const before = new Map((await readCounts()).map((c) => [c.relname, c]));
    const { rows } = await client.query<EventState>(
      'SELECT key, done_outcome, pending_for_order, r_id, r_status, c_status, o_user FROM checkout_event_states($1::jsonb)',
      [JSON.stringify(events)],
    );
    const counts = (await readCounts()).map((c) => ({
      relname: c.relname,
      seqScans: Number(c.seq_scan) - Number(before.get(c.relname)?.seq_scan ?? 0),
      fetched: Number(c.idx_tup_fetch) - Number(before.get(c.relname)?.idx_tup_fetch ?? 0),
    }));
    return { rows, counts };
  } finally {
    await client.query('ROLLBACK');
  }
}

/**
 * What it answers is unchanged: in-flight orders have their one PENDING reservation, processed
 * events say so, and a named reservation is found without counting the order's.
 */
function expectStates(rows: EventState[], eventCount: number): void {
  const byKey = new Map(rows.map((r) => [r.key, r]));
  expect(rows).toHaveLength(eventCount);
  for (let i = 0; i < 20; i += 1) {
    expect(byKey.get(`new-${i}`)).toMatchObject({
      done_outcome: null,
      pending_for_order: 1,
      r_id: `r${HISTORY + 1 + i}`,
      r_status: 'PENDING',
    });
    expect(byKey.get(`old-${i}`)).toMatchObject({
      done_outcome: 'APPLIED',
      pending_for_order: 0,
      r_id: `r${i * 997 + 1}`,
      r_status: 'CONFIRMED',
    });
  }
  for (let i = 0; i < 10; i += 1)
    expect(byKey.get(`named-${i}`)).toMatchObject({ done_outcome: null, pending_for_order: 0, r_id: `r${HISTORY + 100 + i}` });
  expect(byKey.get('two')).toMatchObject({ pending_for_order: 1, r_id: 'r-two-b', r_status: 'PENDING', o_user: 'ua' });
  expect(byKey.get('two-by-user')).toMatchObject({ pending_for_order: 0, r_id: null, o_user: 'ua' });
  expect(byKey.get('two-named')).toMatchObject({ pending_for_order: 0, r_id: 'r-two-a', r_status: 'EXPIRED', o_user: 'ua' });
  expect(byKey.get('new-0')).toMatchObject({ o_user: `u${HISTORY + 1}` });
}

describe('checkout_event_states', () => {
  it('answers a batch of events with index probes only: no table scan, and a few rows read per event', async () => {
    const events = workerTurnEvents();
    const { rows, counts } = await eventStatesWithReads(events);
    expectStates(rows, events.length);
    for (const c of counts) expect({ table: c.relname, seqScans: c.seqScans }).toEqual({ table: c.relname, seqScans: 0 });
    // Each event reads its order's reservation once or twice, its owner and a coupon; walking every
    // PENDING reservation would read about 300 rows an event.
    expect(counts.reduce((sum, c) => sum + c.fetched, 0)).toBeLessThanOrEqual(events.length * 6);
    expect(counts.map((c) => c.relname).sort()).toEqual(['coupons', 'orders', 'processed_events', 'reservations']);
  });
});
