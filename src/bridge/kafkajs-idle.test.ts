// The kafkajs idle-loop fix, against a real broker: an idle connection keeps no wake-up scheduled
// (kafkajs 2.2.4 on its own always has one, a 1 ms timer rescheduled forever), and requests on that
// idle connection are still sent and answered.
import { createRequire } from 'node:module';
import { Kafka, logLevel } from 'kafkajs';
import { fixKafkajsIdleLoop } from './kafkajs-idle';

interface Queue {
  throttleCheckTimeoutId: NodeJS.Timeout | null;
  pending: unknown[];
  inflight: Map<number, unknown>;
}

const load = createRequire(require.resolve('kafkajs'));
const RequestQueue = load('./src/network/requestQueue/index.js') as { prototype: { checkPendingRequests(this: Queue): void } };

describe('kafkajs idle-loop fix', () => {
  const queues = new Set<Queue>();
  const original = RequestQueue.prototype.checkPendingRequests;
  const kafka = new Kafka({
    clientId: 'coupon-tests-idle',
    brokers: (process.env.KAFKA_BROKERS ?? '127.0.0.1:9092').split(','),
    logLevel: logLevel.NOTHING,
  });
  const admin = kafka.admin();

  beforeAll(async () => {
    expect(fixKafkajsIdleLoop()).toBe(true);
    // Remember every request queue that checked its pending requests, to look at it once idle.
    RequestQueue.prototype.checkPendingRequests = function checkPendingRequests(this: Queue) {
      queues.add(this);
      original.call(this);
    };
    await admin.connect();
  });

  afterAll(async () => {
    await admin.disconnect();
    RequestQueue.prototype.checkPendingRequests = original;
  });

  it('leaves an idle connection with no wake-up scheduled, and still answers on it', async () => {
    await admin.describeCluster();
    await admin.listTopics();
    // Every request answered: each queue that served one checked its pending requests when it did.
    const idle = [...queues].filter((q) => q.pending.length === 0 && q.inflight.size === 0);
    expect(idle.length).toBeGreaterThan(0);
    expect(idle.map((q) => (q.throttleCheckTimeoutId ? 'a wake-up scheduled' : 'nothing scheduled'))).toEqual(
      idle.map(() => 'nothing scheduled'),
    );
    // The same idle connections serve the next request without a scheduled check to carry it.
    await expect(admin.describeCluster()).resolves.toHaveProperty('brokers');
  });
});
