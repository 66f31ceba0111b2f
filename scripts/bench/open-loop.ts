// An open loop, as the checkout bench offers its load: item i starts at loadStart + i / rate, whatever
// the earlier ones are doing, so a slow service meets a growing queue instead of a politely slower
// client. Used for the checkouts (checkout-load.ts) and for the bare baseline measured beside them
// (checkout-baseline.ts).
import { fmtInt, note, sleep, wallNow } from './common';

/** Items are started every TICK_MS; more than MAX_IN_FLIGHT unfinished means the target fell behind. */
const TICK_MS = 10;
const MAX_IN_FLIGHT = 5_000;
const PROGRESS_EVERY_MS = 5_000;

export interface OpenLoopResult {
  loadStart: number;
  loadEnd: number;
  /** Items started. */
  started: number;
  maxInFlight: number;
  /** Ticks at which MAX_IN_FLIGHT items were unfinished and none could start. */
  behind: number;
}

/** Starts item 0..count-1 on schedule at `rate` a second; resolves once every started item finished. */
export async function openLoop(
  count: number,
  rate: number,
  start: (index: number) => Promise<void>,
  progress?: (started: number, inFlight: number) => string,
): Promise<OpenLoopResult> {
  const loadStart = wallNow();
  const inFlight = new Set<Promise<void>>();
  let next = 0;
  let maxInFlight = 0;
  let behind = 0;
  let lastProgress = loadStart;
  while (next < count) {
    const due = Math.min(count, Math.floor(((wallNow() - loadStart) / 1000) * rate));
    while (next < due) {
      if (inFlight.size >= MAX_IN_FLIGHT) {
        behind += 1;
        break;
      }
      const p = start(next).finally(() => inFlight.delete(p));
      inFlight.add(p);
      next += 1;
    }
    maxInFlight = Math.max(maxInFlight, inFlight.size);
    if (progress && wallNow() - lastProgress > PROGRESS_EVERY_MS) {
      lastProgress = wallNow();
      note(`  ${fmtInt(next)} started, ${fmtInt(inFlight.size)} in flight${progress(next, inFlight.size)}`);
    }
    await sleep(TICK_MS);
  }
  const loadEnd = wallNow();
  await Promise.all(inFlight);
  return { loadStart, loadEnd, started: next, maxInFlight, behind };
}
