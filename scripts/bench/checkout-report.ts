// The checkout bench's report: each run's lines, the medians of the runs, the bar (PASS, or MISS: a
// missed performance bar is reported, not fatal) and the invariants (PASS or FAIL: a FAIL line fails
// the bench).
import { fmtInt, fmtMs, median, round } from './common';
import type { Invariant } from './checkout-audit';
import type { CheckoutRun } from './checkout-run';
import { BAR } from './checkout-bar';

/** What a measured run printed: its numbers, invariants and failures. */
export function runLines(r: CheckoutRun, runs: number): string[] {
  const { measure } = r;
  const lines = [
    '',
    `${runs > 1 ? `Run ${r.run}/${runs}` : 'Checkout'}: ${fmtInt(measure.started)} started, ${fmtInt(measure.reserved)} reserved (${fmtInt(measure.reservationsPerSec)} reservations/s), ${fmtInt(measure.used)} used (${fmtInt(measure.checkoutsPerSec)} checkouts/s), ${measure.failures} failed`,
    `  reserve (POST → reservation exists): p50 ${fmtMs(measure.reserveMs.p50)} / p95 ${fmtMs(measure.reserveMs.p95)} / p99 ${fmtMs(measure.reserveMs.p99)}`,
    `  event published → coupon USED:      p50 ${fmtMs(measure.eventToUsedMs.p50)} / p95 ${fmtMs(measure.eventToUsedMs.p95)} / p99 ${fmtMs(measure.eventToUsedMs.p99)} / max ${fmtMs(measure.eventToUsedMs.max)}`,
    `  last coupon USED ${fmtMs(measure.tailAfterLoadMs)} after the last checkout started (${r.keptPace ? 'kept pace' : 'fell behind'}); at most ${fmtInt(measure.maxInFlight)} checkouts in flight`,
    `  cpu ms per checkout: ${Object.entries(measure.cpuMsPerCheckout)
      .map(([g, ms]) => `${g} ${ms}`)
      .join(
        ', ',
      )}; machine ${measure.machineBusyPct}% busy; redis ${measure.redisBytesPerCheckout === null ? 'n/a' : fmtInt(measure.redisBytesPerCheckout)} B/checkout`,
    ...r.invariants.map((i) => `  ${i.ok ? 'PASS' : 'FAIL'}  ${i.name.padEnd(44)} ${i.detail}`),
  ];
  if (measure.failures)
    lines.push(
      `  failures: ${Object.entries(measure.failureKinds)
        .map(([k, n]) => `${n} × ${k}`)
        .join('; ')}`,
    );
  return lines;
}

/** The medians of the runs, the bar, and the invariant gate (warm-up included); the summary's lines. */
export function summarize(opts: {
  rate: number;
  warmUpS: number;
  runs: CheckoutRun[];
  warmInvariants: Invariant[];
  publishErrors: string[];
  problems: { counts: Record<string, number>; examples: string[] };
  /** More medians over the runs (the bare baseline's), printed under the checkouts' own. */
  medianLines?: string[];
}) {
  const { runs, warmInvariants, problems } = opts;
  const med = (pick: (m: CheckoutRun['measure']) => number | null) => median(runs.map((r) => pick(r.measure)));
  const p95s = runs.map((r) => r.measure.eventToUsedMs.p95);
  const medians = {
    checkoutsPerSec: med((m) => m.checkoutsPerSec),
    reserveMs: { p50: med((m) => m.reserveMs.p50), p95: med((m) => m.reserveMs.p95), p99: med((m) => m.reserveMs.p99) },
    eventToUsedMs: { p50: med((m) => m.eventToUsedMs.p50), p95: med((m) => m.eventToUsedMs.p95), p99: med((m) => m.eventToUsedMs.p99) },
    cpuMsPerCheckout: Object.fromEntries(
      Object.keys(runs[0]?.measure.cpuMsPerCheckout ?? {}).map((g) => [g, med((m) => m.cpuMsPerCheckout[g] ?? null)]),
    ),
    machineBusyPct: med((m) => m.machineBusyPct),
    redisBytesPerCheckout: med((m) => m.redisBytesPerCheckout),
  };
  const sustainedRuns = runs.filter((r) => r.sustained).length;
  const keptPaceRuns = runs.filter((r) => r.keptPace).length;
  const underBarRuns = runs.filter((r) => r.p95UnderBar).length;
  const ofRuns = (k: number) => (runs.length > 1 ? `, ${k} of ${runs.length} runs` : '');
  const shortestLoadS = Math.min(...runs.map((r) => r.measure.loadSeconds));
  const bars = [
    {
      name: 'checkouts per second (sustained)',
      ok: sustainedRuns === runs.length,
      shown: `${fmtInt(opts.rate)} for ${round(shortestLoadS, 1)} s, ${keptPaceRuns === runs.length ? 'kept pace' : 'fell behind'}${ofRuns(keptPaceRuns)}`,
      target: `>= ${fmtInt(BAR.checkoutsPerSec)} for ${BAR.seconds} s${runs.length > 1 ? ', every run' : ''}`,
    },
    {
      name: `p95 event -> USED${runs.length > 1 ? ' (median)' : ''}`,
      // A run without a p95 (no coupon used) fails the bar rather than drop out of the median.
      ok:
        runs.every((r) => r.measure.eventToUsedMs.p95 !== null) &&
        medians.eventToUsedMs.p95 !== null &&
        medians.eventToUsedMs.p95 < BAR.p95EventToUsedMs,
      shown: `${fmtMs(medians.eventToUsedMs.p95)}${ofRuns(underBarRuns)}`,
      target: `< ${BAR.p95EventToUsedMs} ms`,
    },
  ];
  const invariants = invariantGate(opts.warmUpS, runs, warmInvariants);
  const lines = [''];
  if (runs.length > 1) {
    lines.push(
      `Summary (median of ${runs.length} runs): ${fmtInt(medians.checkoutsPerSec ?? 0)} checkouts/s; reserve p50 ${fmtMs(medians.reserveMs.p50)} / p95 ${fmtMs(medians.reserveMs.p95)}; event → USED p50 ${fmtMs(medians.eventToUsedMs.p50)} / p95 ${fmtMs(medians.eventToUsedMs.p95)} / p99 ${fmtMs(medians.eventToUsedMs.p99)}`,
      `  p95 event → USED by run: ${p95s.map((p) => fmtMs(p)).join(' · ')}`,
      `  cpu ms per checkout: ${Object.entries(medians.cpuMsPerCheckout)
        .map(([g, ms]) => `${g} ${ms}`)
        .join(
          ', ',
        )}; machine ${medians.machineBusyPct}% busy; redis ${medians.redisBytesPerCheckout === null ? 'n/a' : fmtInt(medians.redisBytesPerCheckout)} B/checkout`,
      ...(opts.medianLines ?? []),
    );
  }
  lines.push(
    ...bars.map((b) => `  ${b.ok ? 'PASS' : 'MISS'}  ${b.name.padEnd(34)} ${b.shown.padEnd(18)} (bar ${b.target})`),
    ...invariants.lines,
  );
  if (opts.publishErrors.length) lines.push(`  publish errors: ${opts.publishErrors.slice(0, 3).join('; ')}`);
  if (Object.keys(problems.counts).length)
    lines.push(
      `  service log: ${Object.entries(problems.counts)
        .map(([l, n]) => `${n} ${l}`)
        .join(', ')} line(s), e.g. ${problems.examples[0] ?? ''}`,
    );
  return { lines, medians, bars, invariantsHeld: invariants.held };
}

/** Whether the invariants held in every run and the warm-up: the bench's gate, and its lines (PASS, or FAIL with where). */
export function invariantGate(warmUpS: number, runs: CheckoutRun[], warmInvariants: Invariant[]) {
  const warmHeld = warmInvariants.every((i) => i.ok);
  const held = warmHeld && runs.every((r) => r.invariantsHeld);
  const where = [...(warmHeld ? [] : ['the warm-up']), ...runs.filter((r) => !r.invariantsHeld).map((r) => `run ${r.run}`)];
  const lines = [
    `  ${held ? 'PASS' : 'FAIL'}  invariants                         ${held ? `held in every run${warmUpS > 0 ? ' and the warm-up' : ''} (${runs[0]?.invariants.length ?? 0} checks each)` : `failed in ${where.join(', ')}`}`,
    ...warmInvariants.filter((i) => !i.ok).map((i) => `  FAIL  warm-up: ${i.name.padEnd(35)} ${i.detail}`),
  ];
  return { held, lines };
}
