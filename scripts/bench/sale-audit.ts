// The flash-sale bench's audit step: what the shoppers were told, against what Postgres holds. Every
// check is an invariant of the sale (a failed one is a FAIL line and fails the bench): the stock is
// issued exactly (I1), nobody holds two (I2), the users told "won" are exactly the users holding a
// coupon, and every user got a final answer: a refusal at the door (429, 503, 5xx) or a failed
// outcome counts against the run, since the run then did not test the service.
import type { Client as PgClient } from 'pg';
import { fmtInt } from './common';
import type { Shopper } from './shoppers';

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

/** What the shoppers learned, counted by final outcome. */
export interface OutcomeCounts {
  won: number;
  soldOut: number;
  /** Rejections for any other reason, by code. */
  otherReasons: Record<string, number>;
  failed: number;
  /** Refused at the door, by HTTP status class: 429, 503, 5xx, other (4xx, or 0: no answer). */
  refused: { '429': number; '503': number; '5xx': number; other: number };
  /** Neither an outcome nor a refusal (the generator stopped early). */
  unknown: number;
}

export interface CouponStats {
  count: number;
  distinctUsers: number;
  distinctSlots: number;
  minSlot: number | null;
  maxSlot: number | null;
  foreignHolders: number;
  issuingMs: number | null;
}

export function countOutcomes(shoppers: Shopper[]): OutcomeCounts {
  const c: OutcomeCounts = {
    won: 0,
    soldOut: 0,
    otherReasons: {},
    failed: 0,
    refused: { '429': 0, '503': 0, '5xx': 0, other: 0 },
    unknown: 0,
  };
  for (const s of shoppers) {
    if (s.outcome === 'won') c.won += 1;
    else if (s.outcome === 'SOLD_OUT') c.soldOut += 1;
    else if (s.outcome === 'failed') c.failed += 1;
    else if (s.outcome === 'refused') {
      const st = s.refusedWith ?? 0;
      const key = st === 429 ? '429' : st === 503 ? '503' : st >= 500 ? '5xx' : 'other';
      c.refused[key] += 1;
    } else if (s.outcome === null) c.unknown += 1;
    else c.otherReasons[s.outcome] = (c.otherReasons[s.outcome] ?? 0) + 1;
  }
  return c;
}

const refusedTotal = (c: OutcomeCounts) => c.refused['429'] + c.refused['503'] + c.refused['5xx'] + c.refused.other;

async function couponStats(
  pg: PgClient,
  policyId: string,
  userPrefix: string,
): Promise<{ stats: CouponStats; holders: Map<string, string>; doubles: string[] }> {
  const { rows } = await pg.query<{ id: string; user_id: string; slot: number | null; issued_at: Date }>(
    'SELECT id, user_id, slot, issued_at FROM coupons WHERE policy_id = $1',
    [policyId],
  );
  const holders = new Map<string, string>();
  const doubles: string[] = [];
  const slots = new Set<number>();
  let minSlot: number | null = null;
  let maxSlot: number | null = null;
  let first = Infinity;
  let last = -Infinity;
  for (const r of rows) {
    if (holders.has(r.user_id)) doubles.push(r.user_id);
    holders.set(r.user_id, r.id);
    if (r.slot !== null) {
      slots.add(r.slot);
      minSlot = Math.min(minSlot ?? r.slot, r.slot);
      maxSlot = Math.max(maxSlot ?? r.slot, r.slot);
    }
    first = Math.min(first, r.issued_at.getTime());
    last = Math.max(last, r.issued_at.getTime());
  }
  const stats: CouponStats = {
    count: rows.length,
    distinctUsers: holders.size,
    distinctSlots: slots.size,
    minSlot,
    maxSlot,
    foreignHolders: rows.filter((r) => !r.user_id.startsWith(userPrefix)).length,
    issuingMs: rows.length > 1 ? last - first : null,
  };
  return { stats, holders, doubles };
}

/** The users told "won" against the holders: both ways, and the coupon each was told about. */
function toldVersusHeld(users: string[], shoppers: Shopper[], holders: Map<string, string>) {
  let toldNotHeld = 0;
  let wrongCoupon = 0;
  const examples: string[] = [];
  const told = new Set<string>();
  shoppers.forEach((s, i) => {
    if (s.outcome !== 'won') return;
    const user = users[i] as string;
    told.add(user);
    const held = holders.get(user);
    if (!held) {
      toldNotHeld += 1;
      if (examples.length < 3) examples.push(`${user} told won, holds nothing`);
    } else if (s.couponId && s.couponId !== held) {
      wrongCoupon += 1;
      if (examples.length < 3) examples.push(`${user} told ${s.couponId}, holds ${held}`);
    }
  });
  let heldNotTold = 0;
  for (const user of holders.keys()) {
    if (told.has(user)) continue;
    heldNotTold += 1;
    if (examples.length < 3) examples.push(`${user} holds a coupon, was not told won`);
  }
  return { toldNotHeld, heldNotTold, wrongCoupon, examples };
}

/** Every invariant of one sale; `drained` says whether the issue queue emptied after the load. */
export async function auditSale(opts: {
  pg: PgClient;
  policyId: string;
  stock: number;
  users: string[];
  userPrefix: string;
  shoppers: Shopper[];
  drained: { ok: boolean; detail: string };
}): Promise<{ checks: Check[]; coupons: CouponStats; counts: OutcomeCounts }> {
  const { stock, users, shoppers } = opts;
  const counts = countOutcomes(shoppers);
  const { stats, holders, doubles } = await couponStats(opts.pg, opts.policyId, opts.userPrefix);
  const expected = Math.min(stock, users.length);
  const vs = toldVersusHeld(users, shoppers, holders);
  const refused = refusedTotal(counts);
  const others = Object.entries(counts.otherReasons);
  const firstRefusal = shoppers.find((s) => s.outcome === 'refused')?.detail;
  const firstFailure = shoppers.find((s) => s.outcome === 'failed')?.detail;
  const checks: Check[] = [
    {
      name: `exactly ${fmtInt(expected)} coupons (I1)`,
      ok: stats.count === expected,
      detail: `${fmtInt(stats.count)} coupons for ${fmtInt(users.length)} users and stock ${fmtInt(stock)}`,
    },
    {
      name: 'no user holds two (I2)',
      ok: doubles.length === 0 && stats.distinctUsers === stats.count,
      detail: doubles.length ? `e.g. ${doubles.slice(0, 3).join(', ')}` : `${fmtInt(stats.distinctUsers)} holders`,
    },
    {
      name: 'slots distinct, within 1..STOCK',
      ok: stats.distinctSlots === stats.count && (stats.count === 0 || ((stats.minSlot ?? 0) >= 1 && (stats.maxSlot ?? Infinity) <= stock)),
      detail: `${fmtInt(stats.distinctSlots)} distinct slots in ${stats.minSlot ?? '-'}..${stats.maxSlot ?? '-'}`,
    },
    { name: "holders are this sale's users", ok: stats.foreignHolders === 0, detail: `${stats.foreignHolders} held by others` },
    {
      name: 'told "won" == holding a coupon',
      ok: vs.toldNotHeld === 0 && vs.heldNotTold === 0 && vs.wrongCoupon === 0 && counts.won === stats.count,
      detail: `${fmtInt(counts.won)} told won, ${fmtInt(stats.count)} hold; ${vs.toldNotHeld} told but not holding, ${vs.heldNotTold} holding but not told, ${vs.wrongCoupon} told another coupon${vs.examples.length ? `: ${vs.examples.join('; ')}` : ''}`,
    },
    {
      name: 'no refusal at the door',
      ok: refused === 0,
      detail: `${fmtInt(refused)} refused (429 ×${counts.refused['429']}, 503 ×${counts.refused['503']}, other 5xx ×${counts.refused['5xx']}, other ×${counts.refused.other})${firstRefusal ? `, e.g. ${firstRefusal}` : ''}`,
    },
    {
      name: 'no failed outcome',
      ok: counts.failed === 0,
      detail: `${fmtInt(counts.failed)} failed${firstFailure ? `, e.g. ${firstFailure}` : ''}`,
    },
    {
      name: 'every refusal is SOLD_OUT',
      ok: others.length === 0,
      detail: others.length ? others.map(([c, n]) => `${c} ×${n}`).join(', ') : `${fmtInt(counts.soldOut)} SOLD_OUT`,
    },
    {
      name: 'every user got a final answer',
      ok: counts.won + counts.soldOut + others.reduce((a, [, n]) => a + n, 0) === users.length,
      detail: `${fmtInt(counts.won + counts.soldOut)} of ${fmtInt(users.length)} know (${counts.unknown} never answered)`,
    },
    { name: 'every job settled (I7)', ok: opts.drained.ok, detail: opts.drained.detail },
  ];
  return { checks, coupons: stats, counts };
}
