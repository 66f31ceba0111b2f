// The checkout bench's load generator: an open loop (open-loop.ts) that starts checkout i at
// loadStart + i / rate, whatever the earlier ones are doing. A checkout is POST /coupons/reserve with an Idempotency-Key and
// `Prefer: wait=10`, which answers once the reservation exists (a 202 instead is long-polled), then
// PAYMENT_COMPLETED for its order on Kafka, published in small batches as a payment system sends
// them. Per checkout it records when it started, was reserved and was paid; the run reads these.
import { randomUUID } from 'node:crypto';
import type { Producer } from 'kafkajs';
import type { Call } from './api';
import { fmtInt, wallNow } from './common';
import { openLoop, type OpenLoopResult } from './open-loop';

const PUBLISH_EVERY_MS = 5;

export interface Checkout {
  userId: string;
  couponId: string;
  orderId: string;
  startedAt: number;
  reservedAt?: number;
  publishedAt?: number;
  failure?: string;
}

/** Publishes events in small batches: every checkout whose reservation landed in the last few ms goes out in one send. */
export function eventPublisher(producer: Producer, topic: string) {
  let buffer: { checkout: Checkout; value: string }[] = [];
  let flushing: Promise<void> | null = null;
  const errors: string[] = [];
  const flush = async () => {
    while (buffer.length > 0) {
      const batch = buffer;
      buffer = [];
      const at = wallNow();
      for (const item of batch) item.checkout.publishedAt = at;
      await producer
        .send({ topic, acks: -1, messages: batch.map((b) => ({ key: b.checkout.orderId, value: b.value })) })
        .catch((error: Error) => {
          errors.push(error.message);
          for (const item of batch) item.checkout.failure = `publish: ${error.message}`;
        });
    }
    flushing = null;
  };
  return {
    publish(checkout: Checkout) {
      const event = {
        eventId: randomUUID(),
        type: 'PAYMENT_COMPLETED',
        orderId: checkout.orderId,
        userId: checkout.userId,
        occurredAt: new Date().toISOString(),
      };
      buffer.push({ checkout, value: JSON.stringify(event) });
      // Sent every few milliseconds, as a payment system batches its produce requests; each event's
      // publication time is when its batch goes out, so the wait before it is not counted.
      flushing ??= new Promise<void>((resolve) => setTimeout(resolve, PUBLISH_EVERY_MS)).then(flush);
    },
    async drain() {
      while (flushing) await flushing;
    },
    errors,
  };
}
export type EventPublisher = ReturnType<typeof eventPublisher>;

/** One checkout: the reserve until it is decided, then its payment event. What went wrong is kept on the checkout. */
async function checkout(call: Call, publisher: EventPublisher, c: Checkout, token: string): Promise<void> {
  c.startedAt = wallNow();
  try {
    // Prefer: wait asks the reserve to answer with the finished job (200) when it finishes within
    // 10 s, as a checkout page would; a 202 (still pending) falls back to long-polling the job.
    const reply = await call(
      'POST',
      '/api/v1/coupons/reserve',
      token,
      { couponId: c.couponId, orderId: c.orderId, orderAmount: 50_000 },
      { 'idempotency-key': randomUUID(), prefer: 'wait=10' },
    );
    if (reply.status !== 200 && reply.status !== 202) throw new Error(`reserve answered ${reply.status} ${reply.body?.error?.code ?? ''}`);
    let job = reply;
    while (job.body.status === 'pending') {
      job = await call('GET', `/api/v1/jobs/${reply.body.jobId}?waitMs=10000`, token);
      if (job.status !== 200) throw new Error(`job view answered ${job.status}`);
    }
    if (job.body.status !== 'succeeded') throw new Error(`reserve ${job.body.status}: ${job.body.reason?.code}`);
    c.reservedAt = wallNow();
    publisher.publish(c);
  } catch (error) {
    c.failure = error instanceof Error ? error.message : String(error);
  }
}

/** The open loop over the checkouts: checkout i starts at loadStart + i / rate; then the last payments go out. */
export async function drive(
  call: Call,
  publisher: EventPublisher,
  set: { checkouts: Checkout[]; tokens: string[] },
  rate: number,
): Promise<OpenLoopResult> {
  const result = await openLoop(
    set.checkouts.length,
    rate,
    (i) => checkout(call, publisher, set.checkouts[i] as Checkout, set.tokens[i] as string),
    () => `, ${fmtInt(set.checkouts.filter((x) => x.publishedAt).length)} paid`,
  );
  await publisher.drain();
  return result;
}
