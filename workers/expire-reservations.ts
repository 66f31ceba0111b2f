// Ends PENDING reservations nobody paid for (I6: by expiresAt + 5 s). Every worker sweeps every
// second; SKIP LOCKED lets many sweepers share a backlog, and a backlog (after the fleet was down)
// is worked off in batches of 100 until none is due, with a progress line now and then.
import type { Logger } from '../core/logger';
import { expireDueReservations, type SweepReport } from '../models/reservation';
import { repeatAfter } from '../core/concurrency';

export const SWEEP_BATCH = 100;
const PROGRESS_EVERY_MS = 5_000;

/** Sweeps until no due reservation is left (or `shouldStop`); returns the totals. */
export async function sweepExpiredReservations(log: Logger, shouldStop: () => boolean = () => false): Promise<SweepReport> {
  const total: SweepReport = { expired: 0, released: 0 };
  const started = Date.now();
  let lastProgress = started;
  for (;;) {
    const batch = await expireDueReservations(SWEEP_BATCH);
    total.expired += batch.expired;
    total.released += batch.released;
    // Another sweeper may hold some of the due rows: go on while this one still finds any.
    if (batch.expired === 0 || shouldStop()) break;
    if (Date.now() - lastProgress >= PROGRESS_EVERY_MS) {
      lastProgress = Date.now();
      log.info({ ...total, elapsedMs: lastProgress - started }, 'expiring a backlog of reservations');
    }
  }
  if (total.expired > 0) log.info({ ...total, elapsedMs: Date.now() - started }, 'reservations expired');
  return total;
}

/** Starts sweeping at once (catching up on whatever fell due while no worker ran), then every `everyMs`. */
export function scheduleExpirySweeper(log: Logger, everyMs: number): () => Promise<void> {
  let stopped = false;
  const stop = repeatAfter(
    () => sweepExpiredReservations(log, () => stopped),
    everyMs,
    (error) => log.error({ err: error }, 'reservation sweep failed; retrying on the next tick'),
  );
  return () => {
    stopped = true;
    return stop();
  };
}
