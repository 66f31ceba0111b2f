// When a supervised process dies on its own: restart it after a delay that doubles with each crash
// in a row (so a process that cannot start does not spin the CPU), and give up on a crash loop
// (so a broken build or a missing dependency ends the run with a message instead of forever).
// Pure: the supervisor feeds it times and keeps the record it hands back.

export interface RestartPolicy {
  /** The delay before the first restart of a streak; each further crash in a row doubles it. */
  firstDelayMs: number;
  maxDelayMs: number;
  /** A process that stayed up this long ran fine: its next crash starts a new streak. */
  stableAfterMs: number;
  /** More than this many crashes of one process within windowMs is a crash loop. */
  maxCrashes: number;
  windowMs: number;
}

export const DEFAULT_RESTART_POLICY: RestartPolicy = {
  firstDelayMs: 500,
  maxDelayMs: 15_000,
  stableAfterMs: 30_000,
  maxCrashes: 5,
  windowMs: 60_000,
};

/** What the policy remembers of one process's crashes. */
export interface CrashRecord {
  /** When the crashes within the last window happened (ms timestamps, oldest first). */
  recent: number[];
  /** Crashes in a row, each without a stable run in between. */
  streak: number;
}

export const NO_CRASHES: CrashRecord = { recent: [], streak: 0 };

export type RestartDecision =
  | { action: 'restart'; delayMs: number; attempt: number; record: CrashRecord }
  | { action: 'give-up'; crashesInWindow: number; record: CrashRecord };

/**
 * Decides about a crash at `now` of a process that had been up for `upForMs`.
 * `attempt` counts the restarts of the current streak (1 for the first after a stable run).
 */
export function onCrash(
  record: CrashRecord,
  crash: { now: number; upForMs: number },
  policy: RestartPolicy = DEFAULT_RESTART_POLICY,
): RestartDecision {
  const recent = [...record.recent.filter((at) => crash.now - at < policy.windowMs), crash.now];
  const streak = crash.upForMs >= policy.stableAfterMs ? 1 : record.streak + 1;
  const next: CrashRecord = { recent, streak };
  if (recent.length > policy.maxCrashes) return { action: 'give-up', crashesInWindow: recent.length, record: next };
  return { action: 'restart', delayMs: backoffDelay(streak, policy), attempt: streak, record: next };
}

/** firstDelayMs doubled per crash in a row after the first, capped at maxDelayMs. */
export function backoffDelay(attempt: number, policy: RestartPolicy = DEFAULT_RESTART_POLICY): number {
  // The exponent is capped too, so a long streak cannot overflow to Infinity.
  const doublings = Math.min(Math.max(attempt - 1, 0), 30);
  return Math.min(policy.maxDelayMs, policy.firstDelayMs * 2 ** doublings);
}
