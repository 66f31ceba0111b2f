// Batches the hot path's statements: the calls made against one database in the same turn of the
// event loop (one per job or request that reached that point: a reserve's or a validate's read of
// its coupon, a payment's read of its event state, the checkout writes through reserve_coupons and
// apply_checkout_events, an issue's coupon insert through insert_issued_coupons) go to Postgres as
// one statement, with their items as its one parameter. Why: every round trip to Postgres costs the
// worker a context switch, and on a 2-core machine a transaction of several statements per job held
// checkout to about 150 a second (docs/ARCHITECTURE.md, "Checkout").
import { QueryTypes, type Sequelize } from 'sequelize';
import { coalescePerTurn, isolatingFailures } from '../core/concurrency';

/**
 * A batch operation made into a per-item call on a given database: the items asked for in one turn
 * go to `run` together, one batch per database (src/core/concurrency's coalescePerTurn).
 */
export function coalescePerDatabase<I, R>(
  run: (db: Sequelize) => (items: I[]) => Promise<(R | Error)[]>,
): (db: Sequelize, item: I) => Promise<R> {
  const batchers = new WeakMap<Sequelize, (item: I) => Promise<R>>();
  return (db, item) => {
    let batcher = batchers.get(db);
    if (!batcher) {
      batcher = coalescePerTurn(run(db));
      batchers.set(db, batcher);
    }
    return batcher(item);
  };
}

/**
 * One statement for every call made in the same turn of the event loop: `sql` takes the items as
 * its one parameter (`bind`) and answers rows, and each call gets the row whose `rowKey` is its
 * item's key, or null. A batch that fails is tried again item by item, so one bad item fails alone.
 */
export function batchedQuery<I, R extends object>(
  sql: string,
  bind: (items: I[]) => unknown,
  itemKey: (item: I) => string,
  rowKey: (row: R) => string,
): (db: Sequelize, item: I) => Promise<R | null> {
  return coalescePerDatabase((db) =>
    isolatingFailures(async (items: I[]): Promise<(R | null)[]> => {
      const rows = await db.query<R>(sql, { bind: [bind(items)], type: QueryTypes.SELECT });
      const byKey = new Map(rows.map((r) => [rowKey(r), r]));
      return items.map((item) => byKey.get(itemKey(item)) ?? null);
    }),
  );
}

/** The items as one jsonb parameter. */
export const asJson = (items: unknown[]) => JSON.stringify(items);
