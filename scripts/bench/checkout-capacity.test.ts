import { capacityLines, findCapacity, judgeForCapacity, ratesOf, type CapacityPlan, type RunVerdict } from './checkout-capacity';

const plan: CapacityPlan = { from: 100, to: 1000, step: 50, runsPerRate: 3 };

/** A box that holds every rate up to `limit`, except the runs listed in `flaky` (rate → runs that miss). */
function boxHolding(limit: number, flaky: Record<number, number[]> = {}) {
  const tried: string[] = [];
  const tryRun = async (rate: number, run: number): Promise<RunVerdict> => {
    tried.push(`${rate}#${run}`);
    const held = rate <= limit && !(flaky[rate] ?? []).includes(run);
    return { held, detail: held ? 'ok' : 'missed' };
  };
  return { tried, tryRun };
}

describe('the checkout capacity search', () => {
  it('lists the rates on the steps, the top rounded down onto them', () => {
    expect(ratesOf({ from: 100, to: 320, step: 100, runsPerRate: 1 })).toEqual([100, 200, 300]);
    expect(() => ratesOf({ from: 500, to: 100, step: 50, runsPerRate: 1 })).toThrow(/no rates/);
  });

  it.each([100, 150, 450, 500, 950])('finds %i when the box holds up to it', async (limit) => {
    const box = boxHolding(limit);
    const result = await findCapacity(plan, box.tryRun);
    expect(result.capacity).toBe(limit);
    expect(result.firstMissed).toBe(limit + 50);
    // Bisection over 19 rates: the top, the bottom, then at most 5 halvings.
    expect(result.steps.length).toBeLessThanOrEqual(7);
    // A rate that held ran every run; one that missed stopped at its first miss.
    for (const step of result.steps) expect(step.runs).toHaveLength(step.held ? 3 : 1);
  });

  it('stops at once when the top rate holds', async () => {
    const box = boxHolding(5000);
    const result = await findCapacity(plan, box.tryRun);
    expect(result).toMatchObject({ capacity: 1000, firstMissed: null });
    expect(box.tried).toEqual(['1000#1', '1000#2', '1000#3']);
  });

  it('says so when even the lowest rate misses', async () => {
    const box = boxHolding(50);
    const result = await findCapacity(plan, box.tryRun);
    expect(result).toMatchObject({ capacity: null, firstMissed: 100 });
    expect(box.tried).toEqual(['1000#1', '100#1']);
  });

  it('counts a rate that misses in one run of three as missed', async () => {
    const box = boxHolding(600, { 550: [3] });
    const result = await findCapacity(plan, box.tryRun);
    expect(result.steps.find((s) => s.rate === 550)).toMatchObject({ held: false });
    expect(result.capacity).toBe(500);
    expect(box.tried).toContain('550#3');
  });

  it('judges a run on pace, p95 and invariants, and says why it missed', () => {
    const measure = { checkoutsPerSec: 498.2, eventToUsedMs: { p95: 91.7 }, machineBusyPct: 87.5 };
    expect(judgeForCapacity({ keptPace: true, p95UnderBar: true, invariantsHeld: true, measure })).toEqual({
      held: true,
      detail: '498/s end to end, p95 event → USED 91.7 ms, machine 87.5% busy',
    });
    const missed = judgeForCapacity({ keptPace: false, p95UnderBar: false, invariantsHeld: true, measure });
    expect(missed.held).toBe(false);
    expect(missed.detail).toMatch(/^fell behind, p95 over the bar: /);
    expect(judgeForCapacity({ keptPace: true, p95UnderBar: true, invariantsHeld: false, measure }).held).toBe(false);
  });

  it('reports the capacity and the rate that missed', async () => {
    const result = await findCapacity(plan, boxHolding(450).tryRun);
    const lines = capacityLines(plan, result, 30, 100).join('\n');
    expect(lines).toContain('capacity: 450 checkouts/s (kept pace, p95 event → USED < 100 ms, in 3 of 3 run(s)); 500 missed');
    expect(lines).toMatch(/ {3}450\/s {2}held {2}ok · ok · ok/);
    expect(lines).toMatch(/1,000\/s {2}MISSED {2}missed/);
  });
});
