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
import { paymentJobSchema } from '../queues/jobs';
import { applyCheckoutEvent, paymentCheckoutEvent, reportCheckoutOutcome } from '../usecases/payment-event';

export interface InPlaceDeps {
  db: Sequelize;
  log: Logger;
}

/** Applies the payment jobs among `jobs` in place; resolves to the jobs still to be added (in their order). Never rejects. */
export type ApplyInPlace = (jobs: NewJob[]) => Promise<NewJob[]>;

export function applyPaymentsInPlace(deps: InPlaceDeps): ApplyInPlace {
  const applyOne = async (job: NewJob): Promise<boolean> => {
    if (job.kind !== 'payment') return false;
    const parsed = paymentJobSchema.safeParse(job.data);
    if (!parsed.success) return false; // the worker's schema check fails the job, with its reason
    const { event, traceId, source } = parsed.data;
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
      log.warn({ err: error }, `${event.type} could not be applied in the bridge: queued as a job (retried with backoff)`);
      paymentsAppliedInPlace.inc({ result: 'queued' });
      return false;
    }
  };
  return async (jobs) => {
    const applied = await Promise.all(jobs.map(applyOne));
    return jobs.filter((_, i) => !applied[i]);
  };
}
