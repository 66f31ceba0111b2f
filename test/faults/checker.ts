// The fault suite's one checker: reads every answer the clients got and the final database, and
// counts the violations of each invariant. A count of 0 for every row is the bar, whatever fault ran.
import type { Pool } from 'pg';
import type { Checkout, Shopper } from './load';

export interface Violations {
  /** I1: coupons beyond the policy's quantity. */
  I1_overIssued: number;
  /** I2: users holding more coupons of the policy than its per-user limit. */
  I2_overLimit: number;
  /** I3: units of stock never issued although shoppers asked for more than the stock. */
  I3_unitsLost: number;
  /** Slots outside 1..quantity or held twice. */
  I3_badSlots: number;
  /** I4/I5: shoppers told "won" without a coupon, or holding one after being told "lost". */
  I4_toldWrong: number;
  /** I7: shoppers (or reserves) that never learned their outcome. */
  I7_neverTold: number;
  /** I6/I10: coupons with more than one live reservation, orders holding more than one coupon. */
  I10_doubleReserved: number;
  /** Reserves told "reserved" whose reservation is not in Postgres, or refused for no reason a fault explains. */
  I9_reserveWrong: number;
  /** I5/I11: payment events applied more than once, or not at all (a paid coupon not USED). */
  I11_paymentsWrong: number;
  /** Refunded coupons not restored, or restored ones still USED. */
  I11_refundsWrong: number;
  /** I5/I11 for user events: coupons of the EVENT policy beyond one per event (a duplicate took effect) or short of it (an event lost). */
  I5_userEventsWrong: number;
}

export interface CheckInput {
  pg: Pool;
  policyId: string;
  stock: number;
  perUserLimit: number;
  shoppers: Shopper[];
  checkouts: Checkout[];
  /** The EVENT policy the scenario's user events trigger, and how many distinct events it sent (each twice). */
  userEvents: { policyId: string; events: number };
}

export interface CheckReport {
  violations: Violations;
  /** Violations summed. */
  total: number;
  counts: {
    coupons: number;
    won: number;
    lost: number;
    failedRequests: number;
    reserved: number;
    used: number;
    restored: number;
    eventCoupons: number;
  };
  /** A few examples per violated invariant, for the log. */
  examples: Record<string, string[]>;
}

type CouponRow = { id: string; user_id: string; slot: number; status: string; reservation_id: string | null };
type ReservationRow = { id: string; coupon_id: string; order_id: string; status: string; refunded_at: Date | null };

/** The violation counts, and a few examples of each. */
class Tally {
  readonly v: Violations = {
    I1_overIssued: 0,
    I2_overLimit: 0,
    I3_unitsLost: 0,
    I3_badSlots: 0,
    I4_toldWrong: 0,
    I7_neverTold: 0,
    I10_doubleReserved: 0,
    I9_reserveWrong: 0,
    I11_paymentsWrong: 0,
    I11_refundsWrong: 0,
    I5_userEventsWrong: 0,
  };
  readonly examples: Record<string, string[]> = {};

  /** Keeps an example of `what` (five at most). */
  note(what: keyof Violations, example: string): void {
    const list = (this.examples[what] ??= []);
    if (list.length < 5) list.push(example);
  }

  /** Counts one violation of `what` and keeps it as an example. */
  flag(what: keyof Violations, example: string): void {
    this.v[what] += 1;
    this.note(what, example);
  }
}

export async function check(input: CheckInput): Promise<CheckReport> {
  const { pg, policyId, shoppers, checkouts } = input;
  const tally = new Tally();
  const coupons = await checkIssued(input, tally);
  checkShoppersTold(shoppers, coupons, tally);
  const reservations = await checkLiveReservations(pg, policyId, tally);
  const { used, restored } = await checkCheckouts(pg, checkouts, coupons, reservations, tally);
  const eventCoupons = await checkUserEvents(pg, input.userEvents, tally);
  const v = tally.v;
  const total = Object.values(v).reduce((x, y) => x + y, 0);
  return {
    violations: v,
    total,
    counts: {
      coupons: coupons.length,
      won: shoppers.filter((s) => s.final?.outcome === 'won').length,
      lost: shoppers.filter((s) => s.final?.outcome === 'lost').length,
      failedRequests: shoppers.reduce((n, s) => n + s.failedRequests, 0),
      reserved: checkouts.filter((c) => c.reservation).length,
      used,
      restored,
      eventCoupons,
    },
    examples: tally.examples,
  };
}

/** I1, I2, I3: the sale's coupons against its stock, its per-user limit and its slots; the coupons. */
async function checkIssued(input: CheckInput, tally: Tally): Promise<CouponRow[]> {
  const { pg, policyId, stock, perUserLimit, shoppers } = input;
  const { rows: coupons } = await pg.query<CouponRow>(
    'SELECT id, user_id, slot, status, reservation_id FROM coupons WHERE policy_id = $1',
    [policyId],
  );
  tally.v.I1_overIssued = Math.max(0, coupons.length - stock);
  const perUser = new Map<string, number>();
  for (const c of coupons) perUser.set(c.user_id, (perUser.get(c.user_id) ?? 0) + 1);
  for (const [user, n] of perUser) if (n > perUserLimit) tally.flag('I2_overLimit', `${user} holds ${n}`);
  const demand = shoppers.length * perUserLimit;
  tally.v.I3_unitsLost = Math.max(0, Math.min(stock, demand) - coupons.length);
  const slots = new Set<number>();
  for (const c of coupons) {
    if (c.slot < 1 || c.slot > stock || slots.has(c.slot)) tally.flag('I3_badSlots', `slot ${c.slot}`);
    slots.add(c.slot);
  }
  return coupons;
}

/** I4, I7: every shopper was told, and told what Postgres holds. */
function checkShoppersTold(shoppers: Shopper[], coupons: CouponRow[], tally: Tally): void {
  const holders = new Map(coupons.map((c) => [c.user_id, c]));
  for (const s of shoppers) {
    if (!s.final) tally.flag('I7_neverTold', `${s.user}: ${s.answers.map((a) => a.status).join(',')}`);
    else if (s.final.outcome === 'won' && !holders.has(s.user)) tally.flag('I4_toldWrong', `${s.user} told won, holds nothing`);
    else if (s.final.outcome === 'lost' && holders.has(s.user))
      tally.flag('I4_toldWrong', `${s.user} told ${s.final.code}, holds a coupon`);
  }
}

/** I6/I10: one live reservation per coupon and per order at most; the sale's reservations. */
async function checkLiveReservations(pg: Pool, policyId: string, tally: Tally): Promise<ReservationRow[]> {
  const { rows: reservations } = await pg.query<ReservationRow>(
    'SELECT r.id, r.coupon_id, r.order_id, r.status, r.refunded_at FROM reservations r JOIN coupons c ON c.id = r.coupon_id WHERE c.policy_id = $1',
    [policyId],
  );
  const live = reservations.filter((r) => r.status === 'PENDING' || r.status === 'CONFIRMED');
  const liveByCoupon = new Map<string, number>();
  const liveByOrder = new Map<string, number>();
  for (const r of live) {
    liveByCoupon.set(r.coupon_id, (liveByCoupon.get(r.coupon_id) ?? 0) + 1);
    liveByOrder.set(r.order_id, (liveByOrder.get(r.order_id) ?? 0) + 1);
  }
  for (const [id, n] of [...liveByCoupon, ...liveByOrder]) if (n > 1) tally.flag('I10_doubleReserved', `${id}: ${n} live`);
  return reservations;
}

/** I7, I9, I11: every reserve was told and is in Postgres, each payment event applied once, each refund restored. */
async function checkCheckouts(
  pg: Pool,
  checkouts: Checkout[],
  coupons: CouponRow[],
  reservations: ReservationRow[],
  tally: Tally,
): Promise<{ used: number; restored: number }> {
  const byId = new Map(reservations.map((r) => [r.id, r]));
  const couponById = new Map(coupons.map((c) => [c.id, c]));
  const { rows: applied } = await pg.query<{ event_id: string; outcome: string }>(
    "SELECT event_id, outcome FROM processed_events WHERE source = 'payments' AND event_id = ANY($1::text[])",
    [checkouts.flatMap((c) => c.events.map((e) => e.eventId))],
  );
  const outcomeOf = new Map(applied.map((a) => [a.event_id, a.outcome]));
  let used = 0;
  let restored = 0;
  for (const c of checkouts) {
    if (!c.reservation && !c.refusal) tally.flag('I7_neverTold', `reserve of ${c.couponId}`);
    if (c.refusal) tally.flag('I9_reserveWrong', `${c.couponId} refused ${c.refusal}`);
    if (!c.reservation) continue;
    const r = byId.get(c.reservation.id);
    const coupon = couponById.get(c.couponId);
    if (!r || r.coupon_id !== c.couponId) {
      tally.flag('I9_reserveWrong', `${c.couponId} told reserved as ${c.reservation.id}, not in Postgres`);
      continue;
    }
    for (const e of c.events) {
      if (outcomeOf.get(e.eventId) !== 'APPLIED')
        tally.flag('I11_paymentsWrong', `${e.type} ${e.eventId}: ${outcomeOf.get(e.eventId) ?? 'never processed'}`);
    }
    if (c.refund) {
      restored += 1;
      if (!r.refunded_at || coupon?.status !== 'ISSUED')
        tally.flag('I11_refundsWrong', `${c.couponId}: ${coupon?.status}, refunded ${r.refunded_at}`);
    } else {
      used += 1;
      if (r.status !== 'CONFIRMED' || coupon?.status !== 'USED' || coupon.reservation_id !== r.id)
        tally.flag('I11_paymentsWrong', `${c.couponId}: coupon ${coupon?.status}, reservation ${r.status}`);
    }
  }
  return { used, restored };
}

/** I5 for user events: one coupon of the EVENT policy per distinct event; the coupons it holds. */
async function checkUserEvents(pg: Pool, userEvents: CheckInput['userEvents'], tally: Tally): Promise<number> {
  const { rows } = await pg.query<{ n: string }>('SELECT count(*) AS n FROM coupons WHERE policy_id = $1', [userEvents.policyId]);
  const issued = Number(rows[0]?.n ?? 0);
  tally.v.I5_userEventsWrong = Math.abs(issued - userEvents.events);
  if (tally.v.I5_userEventsWrong > 0) tally.note('I5_userEventsWrong', `${issued} coupons for ${userEvents.events} events`);
  return issued;
}
