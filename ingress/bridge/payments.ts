// payments.v1 → checkout jobs: one job per payment event, its id derived from the event id so a
// redelivered event finds its job instead of making another.
import { randomUUID } from 'node:crypto';
import type { KafkaMessage } from 'kafkajs';
import { paymentEventSchema, paymentJobSchema, type PaymentJob } from '../../queues/jobs';
import { derivedJobId } from '../../queues/names';
import type { MessageRoute } from './consumer';

/** A trace id header taken as given; anything else gets a fresh one. */
const SANE_TRACE_ID = /^[A-Za-z0-9._:-]{8,128}$/;

export function paymentsRoute(topic: string): MessageRoute {
  return {
    topic,
    toJob(message: KafkaMessage, partition: number) {
      let json: unknown;
      try {
        json = JSON.parse(message.value?.toString('utf8') ?? '');
      } catch {
        return { ok: false, reason: 'the value is not JSON' };
      }
      const parsed = paymentEventSchema.safeParse(json);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        return { ok: false, reason: `not a payment event: ${issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'invalid'}` };
      }
      const event = parsed.data;
      const given = message.headers?.['trace-id']?.toString();
      const data: PaymentJob = {
        event,
        traceId: given && SANE_TRACE_ID.test(given) ? given : randomUUID(),
        source: { topic, partition, offset: message.offset },
        receivedAt: new Date().toISOString(),
      };
      // The job exactly as the worker will read it: what it would refuse goes to the DLQ instead.
      const job = paymentJobSchema.safeParse(data);
      if (!job.success) return { ok: false, reason: `not a valid payment job: ${job.error.issues[0]?.message ?? 'invalid'}` };
      return { ok: true, job: { kind: 'payment', id: derivedJobId('payment', event.eventId), data: job.data } };
    },
  };
}
