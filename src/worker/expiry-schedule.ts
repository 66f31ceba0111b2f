// Ends PENDING reservations nobody paid for (I6: by expiresAt + 5 s). Every worker sweeps every
// second; SKIP LOCKED lets many sweepers share a backlog, and a backlog (after the fleet was down)
// is worked off in batches of 100 until none is due, with a progress line now and then. This file
// schedules the sweep; one batch of it is the use case in src/usecases/expire-reservations.ts.
import type { Logger } from '../core/logger';
import { expireDueReservations, type ExpiryDeps, type SweepReport } from '../usecases/expire-reservations';
import { repeatAfter } from '../core/concurrency';

export interface SweeperDeps extends ExpiryDeps {
  log: Logger;
}

export const SWEEP_BATCH = 100;
const PROGRESS_EVERY_MS = 5_000;

/** Sweeps until no due reservation is left (or `shouldStop`); returns the totals. */
export async function sweepExpiredReservations(deps: SweeperDeps, shouldStop: () => boolean = () => false): Promise<SweepReport> {
  const { log } = deps;
  const total: SweepReport = { expired: 0, released: 0 };
  const started = Date.now();
  let lastProgress = started;
  for (;;) {
    const batch = await expireDueReservations(deps, SWEEP_BATCH);
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
export function scheduleExpirySweeper(deps: SweeperDeps, everyMs: number): () => Promise<void> {
  const { log } = deps;
  let stopped = false;
  const stop = repeatAfter(
    () => sweepExpiredReservations(deps, () => stopped),
    everyMs,
    (error) => log.error({ err: error }, 'reservation sweep failed; retrying on the next tick'),
  );
  return () => {
    stopped = true;
    return stop();
  };
}
