// Time out what nobody paid for (I6): end the PENDING reservations whose time is up and give their
// coupons back. src/worker/expiry-schedule.ts runs it on every worker, every
// RESERVATION_SWEEP_INTERVAL_MS.
import { QueryTypes, type Sequelize } from 'sequelize';
import { invalidateUserCoupons } from '../storage/cache/user-coupon-cache';

export interface ExpiryDeps {
  db: Sequelize;
}

export interface SweepReport {
  expired: number;
  released: number;
}

/**
 * Ends up to `limit` PENDING reservations whose time is up and gives their coupons back, in one
 * statement. Coupons are locked first (the lock order of every checkout write: coupon, then
 * reservation) and those another transaction holds are skipped for the next pass, so sweepers on
 * many workers share the backlog without waiting.
 */
export async function expireDueReservations(deps: ExpiryDeps, limit: number): Promise<SweepReport> {
  const [row] = await deps.db.query<{ expired: string; released: string; users: string[] | null }>(
    `WITH due AS (
       -- Coupons first (the lock order); SKIP LOCKED before the LIMIT, so concurrent sweepers
       -- take different reservations instead of the same hundred.
       SELECT r.id, r.coupon_id FROM reservations r JOIN coupons c ON c.id = r.coupon_id
        WHERE r.status = 'PENDING' AND r.expires_at <= now()
        ORDER BY r.expires_at LIMIT $1
          FOR UPDATE OF c SKIP LOCKED
     ), expired AS (
       UPDATE reservations r SET status = 'EXPIRED', ended_at = now(), end_reason = 'TIMEOUT'
         FROM due
        WHERE r.id = due.id AND r.status = 'PENDING'
        RETURNING r.id, r.coupon_id
     ), released AS (
       UPDATE coupons c SET status = 'ISSUED', reserved_at = NULL, order_id = NULL, reservation_id = NULL
         FROM expired
        WHERE c.id = expired.coupon_id AND c.status = 'RESERVED' AND c.reservation_id = expired.id
        RETURNING c.user_id
     )
     SELECT (SELECT count(*) FROM expired) AS expired, (SELECT count(*) FROM released) AS released,
            (SELECT array_agg(DISTINCT user_id) FROM released) AS users`,
    { bind: [limit], type: QueryTypes.SELECT },
  );
  // Called on every sweep, even an empty one: it also retries the invalidations a failed one owes.
  await invalidateUserCoupons(row?.users ?? []);
  return { expired: Number(row?.expired ?? 0), released: Number(row?.released ?? 0) };
}
