// Checkout helpers for tests: a user with coupons, reserve requests, and a Kafka producer for payment events.
import { randomUUID } from 'node:crypto';
import { Kafka, logLevel, Partitioners, type Admin, type Producer } from 'kafkajs';
import { db } from './db';
import { createPolicy, uniqueId } from './fixtures';
import type { Api } from './http';
import { tokenFor } from './tokens';

export interface Shopper {
  id: string;
  token: string;
  coupons: string[];
}

/** A DOWNLOAD policy (FIXED 3,000 off orders of 10,000 or more unless overridden). */
export function createCheckoutPolicy(api: Api, overrides: Record<string, unknown> = {}): Promise<string> {
  return createPolicy(api, { issueMethod: 'DOWNLOAD', totalQuantity: null, perUserLimit: 10, ...overrides });
}

/** A new user holding `count` coupons of the policy, issued through the API. */
export async function shopperWith(api: Api, policyId: string, count = 1): Promise<Shopper> {
  const id = uniqueId('shopper');
  const token = await tokenFor(id);
  const coupons: string[] = [];
  for (let i = 0; i < count; i += 1) {
    const reply = await api.post('/api/v1/coupons/issue', token, { policyId });
    if (reply.status !== 202) throw new Error(`issue not accepted: ${reply.status}`);
    const job = await api.settle(reply.body.jobId, token);
    if (job.status !== 'succeeded') throw new Error(`issue ${job.status}: ${JSON.stringify(job.reason)}`);
    coupons.push(job.result.id);
  }
  return { id, token, coupons };
}

export function reserve(api: Api, token: string, body: { couponId: string; orderId: string; orderAmount: number }, key = randomUUID()) {
  return api.call('POST', '/api/v1/coupons/reserve', { token, body, headers: { 'idempotency-key': key } });
}

/** Reserves and waits for the job: the job view. */
export async function reserveAndSettle(api: Api, shopper: Shopper, couponId: string, orderId = uniqueId('order'), orderAmount = 50_000) {
  const reply = await reserve(api, shopper.token, { couponId, orderId, orderAmount });
  if (reply.status !== 202) throw new Error(`reserve not accepted: ${reply.status} ${JSON.stringify(reply.body)}`);
  return api.settle(reply.body.jobId, shopper.token);
}

export interface ReservationRow {
  id: string;
  coupon_id: string;
  order_id: string;
  status: string;
  expires_at: Date;
  ended_at: Date | null;
  end_reason: string | null;
}

export async function reservationsOf(couponId: string): Promise<ReservationRow[]> {
  const { rows } = await db().query<ReservationRow>(
    'SELECT id, coupon_id, order_id, status, expires_at, ended_at, end_reason FROM reservations WHERE coupon_id = $1 ORDER BY created_at',
    [couponId],
  );
  return rows;
}

export async function couponRow(couponId: string) {
  const { rows } = await db().query<{ status: string; order_id: string | null; reservation_id: string | null; used_at: Date | null }>(
    'SELECT status, order_id, reservation_id, used_at FROM coupons WHERE id = $1',
    [couponId],
  );
  return rows[0];
}

export async function processedEvents(eventId: string) {
  const { rows } = await db().query<{ outcome: string; reason_code: string | null; reservation_id: string | null }>(
    "SELECT outcome, reason_code, reservation_id FROM processed_events WHERE source = 'payments' AND event_id = $1",
    [eventId],
  );
  return rows;
}

/** Polls `read` until `done` says yes, or fails after timeoutMs with the last value. */
export async function eventually<T>(
  read: () => Promise<T>,
  done: (value: T) => boolean,
  timeoutMs = 30_000,
  what = 'condition',
): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (done(value)) return value;
    if (Date.now() > until) throw new Error(`${what} not reached within ${timeoutMs} ms; last: ${JSON.stringify(value)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function paymentEvent(type: string, orderId: string, extra: Record<string, unknown> = {}) {
  return { eventId: randomUUID(), type, orderId, occurredAt: new Date().toISOString(), ...extra };
}

/** A Kafka admin client of the tests' broker (KAFKA_BROKERS); connect it, and disconnect it when done. */
export function kafkaAdmin(clientId = 'coupon-tests-admin'): Admin {
  return new Kafka({ clientId, brokers: (process.env.KAFKA_BROKERS ?? '127.0.0.1:9092').split(','), logLevel: logLevel.NOTHING }).admin();
}

/** A producer of test events, keyed by orderId as the payment system keys them. */
export class EventProducer {
  private readonly kafka: Kafka;
  private producer: Producer | undefined;
  private connected: Promise<void> | undefined;

  /** `brokers` defaults to KAFKA_BROKERS. */
  constructor(brokers: string[] = (process.env.KAFKA_BROKERS ?? '127.0.0.1:9092').split(',')) {
    this.kafka = new Kafka({ clientId: 'coupon-tests', brokers, logLevel: logLevel.NOTHING });
  }

  async send(topic: string, messages: { key: string; value: string | Buffer; partition?: number }[]): Promise<void> {
    if (!this.producer) {
      this.producer = this.kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
      // Sends that start together wait for the one connect.
      this.connected = this.producer.connect();
    }
    await this.connected;
    await this.producer.send({ topic, acks: -1, messages });
  }

  async publish(topic: string, event: { orderId: string }): Promise<void> {
    await this.send(topic, [{ key: event.orderId, value: JSON.stringify(event) }]);
  }

  /** Every message of a topic from the beginning, read by a throwaway group. */
  async readAll(topic: string, expected: number, timeoutMs = 30_000) {
    const consumer = this.kafka.consumer({ groupId: `reader-${randomUUID()}` });
    const seen: { partition: number; key: string | undefined; value: string; headers: Record<string, string> }[] = [];
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        const headers = Object.fromEntries(Object.entries(message.headers ?? {}).map(([k, v]) => [k, String(v)]));
        seen.push({ partition, key: message.key?.toString(), value: message.value?.toString() ?? '', headers });
      },
    });
    try {
      await eventually(
        async () => seen.length,
        (n) => n >= expected,
        timeoutMs,
        `${expected} messages on ${topic}`,
      );
      return seen;
    } finally {
      await consumer.disconnect();
    }
  }

  async close(): Promise<void> {
    await this.producer?.disconnect();
  }
}
