// The checkout bench's capacity search (`CAPACITY=true npm run bench:checkout`): the highest rate, in
// steps of STEP from FROM_RATE up to RATE, at which this box holds the checkout bar's latency (every
// checkout finished and the service kept pace, p95 event → USED under 100 ms) in every one of RUNS
// runs. What an operator sizes a sale by: the bar's 1,000 a second is a target; this is what the
// machine at hand carries within it.
//
// Bisection over the steps, assuming that a rate the box cannot hold is not held at a higher one: the
// top rate first (held: done), then the lowest, then halves. A rate is tried run by run and judged
// missed at its first missed run, so a rate that misses costs one run, and one that holds costs RUNS.
import { fmtInt, fmtMs } from './common';

export interface CapacityPlan {
  /** The lowest rate tried. */
  from: number;
  /** The highest rate tried (the bar's rate by default). */
  to: number;
  step: number;
  /** Runs a rate must hold in, every one. */
  runsPerRate: number;
}

/** One run at a rate, as the search judges it. */
export interface RunVerdict {
  held: boolean;
  /** Why it missed, or what it measured: for the report. */
  detail: string;
}

export interface CapacityStep {
  rate: number;
  runs: RunVerdict[];
  held: boolean;
}

export interface CapacityResult {
  /** The highest rate held in every run, or null when even `from` missed. */
  capacity: number | null;
  /** The lowest rate that missed, or null when `to` held. */
  firstMissed: number | null;
  /** Every rate tried, in the order tried. */
  steps: CapacityStep[];
}

/** The rates of a plan: from, from + step, ... up to `to` (rounded down onto the steps). */
export function ratesOf(plan: CapacityPlan): number[] {
  if (plan.step <= 0 || plan.from <= 0 || plan.to < plan.from)
    throw new Error(`capacity: no rates from ${plan.from} to ${plan.to} by ${plan.step}`);
  const rates: number[] = [];
  for (let rate = plan.from; rate <= plan.to; rate += plan.step) rates.push(rate);
  return rates;
}

/**
 * Finds the highest rate of the plan held in every run. `tryRun(rate, run)` runs the load once at
 * `rate` (run counts from 1 within that rate) and judges it.
 */
export async function findCapacity(
  plan: CapacityPlan,
  tryRun: (rate: number, run: number) => Promise<RunVerdict>,
): Promise<CapacityResult> {
  const rates = ratesOf(plan);
  const steps: CapacityStep[] = [];
  const holds = async (rate: number) => {
    const step: CapacityStep = { rate, runs: [], held: true };
    steps.push(step);
    for (let run = 1; run <= plan.runsPerRate && step.held; run += 1) {
      const verdict = await tryRun(rate, run);
      step.runs.push(verdict);
      step.held = verdict.held;
    }
    return step.held;
  };
  // Indexes into `rates`: every rate at or below `held` held, every rate at or above `missed` missed.
  let held = -1;
  let missed = rates.length;
  const top = rates.length - 1;
  if (await holds(rates[top] as number)) held = top;
  else missed = top;
  if (held < 0 && missed > 0) {
    if (await holds(rates[0] as number)) held = 0;
    else missed = 0;
  }
  while (held >= 0 && missed - held > 1) {
    const mid = (held + missed) >> 1;
    if (await holds(rates[mid] as number)) held = mid;
    else missed = mid;
  }
  return {
    capacity: held >= 0 ? (rates[held] as number) : null,
    firstMissed: missed < rates.length ? (rates[missed] as number) : null,
    steps,
  };
}

/** The verdict on one measured run: held when it kept pace and its p95 event → USED is under the bar. */
export function judgeForCapacity(run: {
  keptPace: boolean;
  p95UnderBar: boolean;
  invariantsHeld: boolean;
  measure: { checkoutsPerSec: number; eventToUsedMs: { p95: number | null }; machineBusyPct: number };
}): RunVerdict {
  const { measure } = run;
  const numbers = `${fmtInt(measure.checkoutsPerSec)}/s end to end, p95 event → USED ${fmtMs(measure.eventToUsedMs.p95)}, machine ${measure.machineBusyPct}% busy`;
  const misses = [
    !run.keptPace && 'fell behind',
    !run.p95UnderBar && 'p95 over the bar',
    !run.invariantsHeld && 'an invariant failed',
  ].filter((m): m is string => !!m);
  return { held: misses.length === 0, detail: misses.length === 0 ? numbers : `${misses.join(', ')}: ${numbers}` };
}

/** The search's summary lines. */
export function capacityLines(plan: CapacityPlan, result: CapacityResult, durationS: number, barMs: number): string[] {
  const lines = [
    '',
    `Capacity search: ${fmtInt(plan.from)}-${fmtInt(plan.to)} checkouts/s by ${fmtInt(plan.step)}, ${plan.runsPerRate} run(s) of ${durationS} s a rate`,
  ];
  for (const step of [...result.steps].sort((a, b) => a.rate - b.rate)) {
    lines.push(`  ${fmtInt(step.rate).padStart(6)}/s  ${step.held ? 'held' : 'MISSED'}  ${step.runs.map((r) => r.detail).join(' · ')}`);
  }
  const what = `kept pace, p95 event → USED < ${barMs} ms, in ${plan.runsPerRate} of ${plan.runsPerRate} run(s)`;
  if (result.capacity === null) lines.push(`  capacity: below ${fmtInt(plan.from)} checkouts/s (${fmtInt(plan.from)} missed: ${what})`);
  else
    lines.push(
      `  capacity: ${fmtInt(result.capacity)} checkouts/s (${what})${result.firstMissed === null ? `; the top of the search, ${fmtInt(plan.to)}, held` : `; ${fmtInt(result.firstMissed)} missed`}`,
    );
  return lines;
}
