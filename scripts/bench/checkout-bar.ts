// The bar the checkout bench measures against: 1,000 checkouts/s offered for 30 s, each paid
// coupon USED within 100 ms (p95) of its payment event, and whether one run met it.
export const BAR = { checkoutsPerSec: 1_000, seconds: 30, p95EventToUsedMs: 100 };

/**
 * Whether a run met the bar. Sustained: the offered rate held for the whole load, every checkout
 * finished, and the service kept pace (no backlog: the last coupon was used within a second of the
 * last checkout starting).
 */
export function judgeRun(
  rate: number,
  loadSeconds: number,
  m: { started: number; used: number; failures: number; tailAfterLoadMs: number; eventToUsedMs: { p95: number | null } },
): { keptPace: boolean; sustained: boolean; p95UnderBar: boolean } {
  const keptPace = m.failures === 0 && m.used === m.started && m.tailAfterLoadMs <= 1_000;
  const sustained = rate >= BAR.checkoutsPerSec && loadSeconds >= BAR.seconds - 0.5 && keptPace;
  const p95UnderBar = m.eventToUsedMs.p95 !== null && m.eventToUsedMs.p95 < BAR.p95EventToUsedMs;
  return { keptPace, sustained, p95UnderBar };
}
