// coupon_coupons_used_total{policy_id}. A payment's rows name the coupon, not its policy, so the used
// coupons are noted and their policies looked up once a second in one query, off the checkout path
// (one round trip per checkout would cost the worker a context switch each).
import { QueryTypes } from 'sequelize';
import type { Logger } from '../core/logger';
import { couponsUsedTotal } from '../core/metrics';
import { sequelize } from '../core/postgres';

/** Noted coupons kept while Postgres does not answer; beyond that they go uncounted. */
const MAX_PENDING = 100_000;
const PER_QUERY = 5_000;

let pending: string[] = [];
let running = false;

export function noteCouponUsed(couponId: string): void {
  if (running && pending.length < MAX_PENDING) pending.push(couponId);
}

/** Starts counting; the function it returns counts what is left and stops. */
export function startUsageMetrics(log: Logger, everyMs = 1_000): () => Promise<void> {
  running = true;
  let inFlight: Promise<void> = Promise.resolve();
  const flush = async () => {
    while (pending.length > 0) {
      const ids = pending.slice(0, PER_QUERY);
      const rows = await sequelize().query<{ policy_id: string; n: number }>(
        'SELECT policy_id, count(*)::int AS n FROM coupons WHERE id = ANY($1) GROUP BY policy_id',
        { bind: [ids], type: QueryTypes.SELECT },
      );
      pending = pending.slice(ids.length);
      for (const row of rows) couponsUsedTotal.inc({ policy_id: row.policy_id }, row.n);
    }
  };
  const tick = () => {
    inFlight = inFlight.then(flush).catch((error: unknown) => log.debug({ err: error }, 'used coupons not counted yet'));
  };
  const timer = setInterval(tick, everyMs);
  timer.unref();
  return async () => {
    clearInterval(timer);
    tick();
    await inFlight;
    running = false;
  };
}
