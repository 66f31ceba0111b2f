import { backoffDelay, DEFAULT_RESTART_POLICY, NO_CRASHES, onCrash, type CrashRecord, type RestartDecision } from './restart-policy';

const policy = DEFAULT_RESTART_POLICY;

/** Feeds crashes at the given times (each after `upForMs` of uptime) and returns every decision. */
function crashes(times: number[], upForMs = 100): RestartDecision[] {
  let record: CrashRecord = NO_CRASHES;
  return times.map((now) => {
    const decision = onCrash(record, { now, upForMs }, policy);
    record = decision.record;
    return decision;
  });
}

describe('restart backoff', () => {
  it('starts at 0.5 s and doubles up to a cap of 15 s', () => {
    expect([1, 2, 3, 4, 5, 6, 7, 20, 1000].map((attempt) => backoffDelay(attempt, policy))).toEqual([
      500, 1000, 2000, 4000, 8000, 15_000, 15_000, 15_000, 15_000,
    ]);
  });

  it('restarts crash after crash with a growing delay while the crashes are spread out', () => {
    // One crash every 20 s: never more than 5 within 60 s, so it keeps restarting.
    const decisions = crashes(Array.from({ length: 8 }, (_, i) => i * 20_000));
    expect(decisions.map((d) => d.action)).toEqual(Array(8).fill('restart'));
    expect(decisions.map((d) => (d.action === 'restart' ? d.attempt : 0))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(decisions.map((d) => (d.action === 'restart' ? d.delayMs : 0))).toEqual([500, 1000, 2000, 4000, 8000, 15_000, 15_000, 15_000]);
  });

  it('starts a new streak after the process stayed up a while', () => {
    let record: CrashRecord = NO_CRASHES;
    for (const now of [0, 1000, 3000]) record = onCrash(record, { now, upForMs: 100 }, policy).record;
    expect(record.streak).toBe(3);
    const afterStableRun = onCrash(record, { now: 120_000, upForMs: policy.stableAfterMs }, policy);
    expect(afterStableRun).toMatchObject({ action: 'restart', attempt: 1, delayMs: 500 });
  });

  it('gives up on the sixth crash within 60 s', () => {
    const decisions = crashes([0, 1000, 3000, 7000, 15_000, 31_000]);
    expect(decisions.map((d) => d.action)).toEqual(['restart', 'restart', 'restart', 'restart', 'restart', 'give-up']);
    expect(decisions[5]).toMatchObject({ action: 'give-up', crashesInWindow: 6 });
  });

  it('forgets crashes older than the window', () => {
    // Five quick crashes, then a sixth just after the first left the window.
    const decisions = crashes([0, 1000, 2000, 3000, 4000, 60_000]);
    expect(decisions.map((d) => d.action)).toEqual(Array(6).fill('restart'));
    expect(decisions[5]?.record.recent).toEqual([1000, 2000, 3000, 4000, 60_000]);
  });

  it('counts a crash loop even when each run was long enough to reset the delay', () => {
    // Stable runs reset the delay, not the window: six crashes within a minute still give up.
    const fast = { ...policy, stableAfterMs: 1000 };
    let record: CrashRecord = NO_CRASHES;
    const actions = [0, 5000, 10_000, 15_000, 20_000, 25_000].map((now) => {
      const decision = onCrash(record, { now, upForMs: 5000 }, fast);
      record = decision.record;
      return decision.action;
    });
    expect(actions).toEqual(['restart', 'restart', 'restart', 'restart', 'restart', 'give-up']);
  });
});
