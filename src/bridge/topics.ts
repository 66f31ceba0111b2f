// Kafka topics → jobs: one job per event, its id derived from the event id, so a redelivered event
// finds its job instead of making another. What the worker could never process goes to the DLQ.
import type { KafkaMessage } from 'kafkajs';
import type { z } from 'zod';
import { traceIdFrom } from '../core/trace';
import { paymentEventSchema, paymentJobSchema, userEventJobSchema, userEventSchema } from '../queues/jobs';
import { derivedJobId, type JobKind } from '../queues/names';
import type { InboxSource } from '../storage/inbox';
import type { MessageRoute } from './consumer';

function eventRoute<E extends { eventId: string; orderId?: string }>(opts: {
  topic: string;
  source: InboxSource;
  kind: JobKind;
  what: string;
  eventSchema: z.ZodType<E>;
  jobSchema: z.ZodType;
}): MessageRoute {
  const { topic, kind, what } = opts;
  return {
    topic,
    source: opts.source,
    toJob(message: KafkaMessage, partition: number) {
      let json: unknown;
      try {
        json = JSON.parse(message.value?.toString('utf8') ?? '');
      } catch {
        return { ok: false, reason: 'the value is not JSON' };
      }
      const parsed = opts.eventSchema.safeParse(json);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        return { ok: false, reason: `not a ${what}: ${issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'invalid'}` };
      }
      const event = parsed.data;
      const data = {
        event,
        traceId: traceIdFrom(message.headers?.['trace-id']?.toString()),
        source: { topic, partition, offset: message.offset },
        receivedAt: new Date().toISOString(),
      };
      // The job exactly as the worker will read it: what it would refuse goes to the DLQ instead.
      const job = opts.jobSchema.safeParse(data);
      if (!job.success) return { ok: false, reason: `not a valid ${kind} job: ${job.error.issues[0]?.message ?? 'invalid'}` };
      return {
        ok: true,
        job: { kind, id: derivedJobId(kind, event.eventId), data: job.data as object },
        eventId: event.eventId,
        orderId: event.orderId ?? null,
      };
    },
  };
}

/** payments.v1 → payment jobs (payments queue), applied by the checkout processor. */
export function paymentsRoute(topic: string): MessageRoute {
  return eventRoute({
    topic,
    source: 'payments',
    kind: 'payment',
    what: 'payment event',
    eventSchema: paymentEventSchema,
    jobSchema: paymentJobSchema,
  });
}

/** user-events.v1 → user-event jobs (issue queue): every ACTIVE EVENT policy the type triggers issues. */
export function userEventsRoute(topic: string): MessageRoute {
  return eventRoute({
    topic,
    source: 'user-events',
    kind: 'user-event',
    what: 'user event',
    eventSchema: userEventSchema,
    jobSchema: userEventJobSchema,
  });
}
