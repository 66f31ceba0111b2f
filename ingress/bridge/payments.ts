// payments.v1 → checkout jobs: one job per payment event, its id derived from the event id so a
// redelivered event finds its job instead of making another.
import { randomUUID } from 'node:crypto';
import type { KafkaMessage } from 'kafkajs';
import { paymentEventSchema, type PaymentJob } from '../../queues/jobs';
import { derivedJobId } from '../../queues/names';
import type { MessageRoute } from './consumer';

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
      const data: PaymentJob = {
        event,
        traceId: message.headers?.['trace-id']?.toString() || randomUUID(),
        source: { topic, partition, offset: message.offset },
        receivedAt: new Date().toISOString(),
      };
      return { ok: true, job: { kind: 'payment', id: derivedJobId('payment', event.eventId), data } };
    },
  };
}
