// The checkout bench's audit step: the invariants of one load of checkouts, from Postgres. Every
// checkout started counts: a reserve refused at the door (429, 503, 5xx) or failed, or a payment not
// published, fails the run, so a run where every reserve fails cannot pass by comparing 0 with 0.
import type { Client as PgClient } from 'pg';
import { fmtInt } from './common';
import type { Checkout } from './checkout-load';

export interface Invariant {
  name: string;
  ok: boolean;
  detail: string;
}

/** The invariants of the checkouts of one policy, `used` of whose coupons are USED. */
export async function auditCheckouts(pg: PgClient, policyId: string, checkouts: Checkout[], used: number): Promise<Invariant[]> {
  const started = checkouts.filter((c) => c.startedAt > 0).length;
  const published = checkouts.filter((c) => c.publishedAt !== undefined && !c.failure).length;
  const failures = checkouts.filter((c) => c.failure);
  const refusedAtDoor = failures.filter((c) => /^reserve answered (429|5\d\d)/.test(c.failure as string)).length;
  const q = async (sql: string) => Number((await pg.query<{ n: string }>(sql, [policyId])).rows[0]?.n ?? -1);
  const confirmed = await q(
    `SELECT count(*) AS n FROM reservations r JOIN coupons c ON c.id = r.coupon_id WHERE c.policy_id = $1 AND r.status = 'CONFIRMED'`,
  );
  const twice = await q(
    `SELECT count(*) AS n FROM (SELECT r.coupon_id FROM reservations r JOIN coupons c ON c.id = r.coupon_id WHERE c.policy_id = $1 AND r.status IN ('PENDING', 'CONFIRMED') GROUP BY r.coupon_id HAVING count(*) > 1) x`,
  );
  const pending = await q(
    `SELECT count(*) AS n FROM reservations r JOIN coupons c ON c.id = r.coupon_id WHERE c.policy_id = $1 AND r.status = 'PENDING'`,
  );
  const applied = await q(
    `SELECT count(*) AS n FROM processed_events e JOIN reservations r ON r.id = e.reservation_id JOIN coupons c ON c.id = r.coupon_id WHERE c.policy_id = $1 AND e.outcome = 'APPLIED'`,
  );
  const mismatched = await q(
    `SELECT count(*) AS n FROM coupons c JOIN reservations r ON r.id = c.reservation_id WHERE c.policy_id = $1 AND c.status = 'USED' AND (r.status <> 'CONFIRMED' OR r.order_id <> c.order_id)`,
  );
  return [
    { name: 'checkouts completed', ok: started > 0 && used === started, detail: `${fmtInt(used)} USED of ${fmtInt(started)} started` },
    {
      name: 'no reserve refused at the door or failed',
      ok: failures.length === 0,
      detail: `${fmtInt(failures.length)} failed, ${fmtInt(refusedAtDoor)} of them refused (429/5xx)${failures[0] ? `, e.g. ${failures[0].failure}` : ''}`,
    },
    {
      name: 'every published payment used its coupon',
      ok: used === published,
      detail: `${fmtInt(used)} USED of ${fmtInt(published)} published`,
    },
    { name: 'one CONFIRMED reservation per used coupon', ok: confirmed === used, detail: `${fmtInt(confirmed)} confirmed` },
    { name: 'no coupon reserved or used twice', ok: twice === 0, detail: `${twice} coupons` },
    { name: 'no reservation left PENDING', ok: pending === 0, detail: `${pending} pending` },
    { name: 'each payment event applied once', ok: applied === used, detail: `${fmtInt(applied)} APPLIED events` },
    { name: 'used coupons agree with their reservation', ok: mismatched === 0, detail: `${mismatched} disagree` },
  ];
}
