// Publishes one event by hand, keyed as its producer would key it, and prints it:
//   npm run -s payment -- <TYPE> <orderId> [reservationId]   payments topic (KAFKA_PAYMENTS_TOPIC), keyed by orderId;
//                                                            TYPE PAYMENT_COMPLETED|FAILED|CANCELLED|REFUNDED
//   npm run -s user-event -- <TYPE> <userId>                 user-events topic (KAFKA_USER_EVENTS_TOPIC), keyed by userId;
//                                                            TYPE e.g. USER_SIGNED_UP (an EVENT policy's triggerEvent)
import { randomUUID } from 'node:crypto';
import { config } from '../src/core/config';
import { createKafka, createProducer } from '../src/core/kafka';
import { logger } from '../src/core/logger';
import { PAYMENT_EVENT_TYPES } from '../src/domain/checkout-rules';
import { paymentEventSchema, userEventSchema } from '../src/queues/jobs';

const USAGE = {
  payment: `npm run -s payment -- <${PAYMENT_EVENT_TYPES.join('|')}> <orderId> [reservationId]`,
  user: 'npm run -s user-event -- <TYPE, e.g. USER_SIGNED_UP> <userId>',
};

function build(kind: string, args: string[]): { topic: string; key: string; event: object } | null {
  const [type, id, reservationId] = args;
  if (!type || !id) return null;
  const common = { eventId: randomUUID(), type, occurredAt: new Date().toISOString() };
  if (kind === 'payment') {
    const parsed = paymentEventSchema.safeParse({ ...common, orderId: id, ...(reservationId && { reservationId }) });
    return parsed.success ? { topic: config().KAFKA_PAYMENTS_TOPIC, key: id, event: parsed.data } : null;
  }
  const parsed = userEventSchema.safeParse({ ...common, userId: id });
  return parsed.success ? { topic: config().KAFKA_USER_EVENTS_TOPIC, key: id, event: parsed.data } : null;
}

async function main(): Promise<void> {
  const [kind, ...args] = process.argv.slice(2);
  const message = kind === 'payment' || kind === 'user' ? build(kind, args) : null;
  if (!message) {
    process.stderr.write(
      `usage: ${kind === 'user' ? USAGE.user : kind === 'payment' ? USAGE.payment : `${USAGE.payment}\n       ${USAGE.user}`}\n`,
    );
    process.exit(64);
  }
  const producer = createProducer(createKafka(logger()));
  await producer.connect();
  try {
    await producer.send({ topic: message.topic, acks: -1, messages: [{ key: message.key, value: JSON.stringify(message.event) }] });
  } finally {
    await producer.disconnect();
  }
  process.stdout.write(`${JSON.stringify(message.event)}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`could not publish: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
