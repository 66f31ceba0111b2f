// `npm run -s payment -- <TYPE> <orderId> [reservationId]`: publishes one payment event to the
// payments topic (KAFKA_PAYMENTS_TOPIC on KAFKA_BROKERS), keyed by orderId as the payment system
// keys them, and prints it. TYPE is PAYMENT_COMPLETED, PAYMENT_FAILED, PAYMENT_CANCELLED or
// PAYMENT_REFUNDED. For trying the checkout flow by hand.
import { randomUUID } from 'node:crypto';
import { config } from '../core/config';
import { createKafka, createProducer } from '../core/kafka';
import { logger } from '../core/logger';
import { PAYMENT_EVENT_TYPES, type PaymentEventType } from '../models/checkout-rules';
import { paymentEventSchema } from '../queues/jobs';

async function main(): Promise<void> {
  const [type, orderId, reservationId] = process.argv.slice(2);
  if (!type || !orderId || !PAYMENT_EVENT_TYPES.includes(type as PaymentEventType)) {
    process.stderr.write(`usage: npm run -s payment -- <${PAYMENT_EVENT_TYPES.join('|')}> <orderId> [reservationId]\n`);
    process.exit(64);
  }
  const event = paymentEventSchema.parse({ eventId: randomUUID(), type, orderId, ...(reservationId && { reservationId }), occurredAt: new Date().toISOString() });
  const producer = createProducer(createKafka(logger()));
  await producer.connect();
  try {
    await producer.send({ topic: config().KAFKA_PAYMENTS_TOPIC, acks: -1, messages: [{ key: orderId, value: JSON.stringify(event) }] });
  } finally {
    await producer.disconnect();
  }
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`could not publish: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
