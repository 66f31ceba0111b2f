// Payments applied by the bridge itself (PAYMENT_APPLY=bridge). Once a batch's events are in the inbox,
// each payment is applied where it stands, by the use case a worker would run for its job
// (src/usecases/payment-event.ts), all of a turn in one read and one write of Postgres: no job is
// added, taken and finished in Redis, and the coupon is USED a queue hop sooner. An event that cannot
// take effect yet (a refund ahead of its payment) or whose application failed is handed back, and
// becomes a job as in worker mode, so the worker's waiting and retries apply to it. Exactly once in
// effect as before: processed_events stops a redelivery, the inbox keeps an event whose application
// a crash cut off (the inbox sweep makes it a job), and the offset moves only after all of it.
import type { Sequelize } from 'sequelize';
import type { Logger } from '../core/logger';
import { paymentsAppliedInPlace } from '../core/metrics';
import type { NewJob } from '../queues/enqueue';
import type { PaymentJob } from '../queues/jobs';
import { applyCheckoutEvent, paymentCheckoutEvent, reportCheckoutOutcome } from '../usecases/payment-event';

export interface InPlaceDeps {
  db: Sequelize;
  log: Logger;
}

/** Applies the payment jobs among `jobs` in place; resolves to the jobs still to be added (in their order). Never rejects. */
export type ApplyInPlace = (jobs: NewJob[]) => Promise<NewJob[]>;

export const IN_PLACE_RESULTS = ['applied', 'ignored', 'duplicate', 'queued'] as const;

export function applyPaymentsInPlace(deps: InPlaceDeps): ApplyInPlace {
  // Series from 0, so Prometheus's increase() sees the first of each.
  for (const result of IN_PLACE_RESULTS) paymentsAppliedInPlace.inc({ result }, 0);

  const applyOne = async (job: NewJob): Promise<boolean> => {
    if (job.kind !== 'payment') return false;
    // Parsed already: the route made the job from paymentJobSchema's output (src/bridge/topics.ts).
    const { event, traceId, source } = job.data as PaymentJob;
    const log = deps.log.child({ traceId, jobId: job.id, eventId: event.eventId, orderId: event.orderId, kafka: source });
    try {
      const outcome = await applyCheckoutEvent(deps, paymentCheckoutEvent(event));
      if (outcome.kind === 'wait') {
        log.info({ why: outcome.why }, `${event.type} cannot take effect yet: queued as a job to wait its turn`);
        paymentsAppliedInPlace.inc({ result: 'queued' });
        return false;
      }
      reportCheckoutOutcome(log, event.type, outcome);
      paymentsAppliedInPlace.inc({ result: outcome.kind });
      return true;
    } catch (error) {
      // Postgres refused or did not answer, or the write committed and dropping the user's cached
      // coupon list in Redis failed after it: either way the job's worker applies it, or finds it
      // applied and drops the list again.
      log.warn({ err: error }, `${event.type} not applied in the bridge, or its cache not dropped: queued as a job`);
      paymentsAppliedInPlace.inc({ result: 'queued' });
      return false;
    }
  };

  return async (jobs) => {
    // One application per event id: two copies of an event in one turn would meet in one write,
    // where the second is refused as stale and both would end as duplicates, with no line, count or
    // alert for what the first did. A copy shares the first's fate (its job id too, so it adds no job).
    const first = new Map<string, Promise<boolean>>();
    const handled = await Promise.all(
      jobs.map((job) => {
        const earlier = first.get(job.id);
        if (earlier) return earlier.then((applied) => applied && countCopy());
        const applied = applyOne(job);
        first.set(job.id, applied);
        return applied;
      }),
    );
    return jobs.filter((_, i) => !handled[i]);
  };
}

/** A second copy of an event applied in the same chunk: counted as the duplicate it is. */
function countCopy(): true {
  paymentsAppliedInPlace.inc({ result: 'duplicate' });
  return true;
}
