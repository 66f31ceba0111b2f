// Alerts raised by real faults on real processes: CONSUMER_LAG when a bridge cannot hand its
// messages over (its Redis is away) and the lag of a topic passes the threshold, JOB_FAILURES when
// issue jobs fail for good because the worker's Postgres is away. Each is a log line with an
// `alert` field and a count in coupon_alerts_total on the process's /metrics.
import type { ChildProcess } from 'node:child_process';
import { EventProducer, eventually, paymentEvent } from './support/checkout';
import { createPolicy, uniqueId } from './support/fixtures';
import { Api } from './support/http';
import { parseExposition, sampleValue, type Family } from './support/prometheus';
import { logLines, startStack, stopProcess, type Stack } from './support/stack';
import { proxiedRedis, slowPostgres, type TcpProxy } from './support/tcp-proxy';
import { tokenFor } from './support/tokens';

async function scrape(opsUrl: string): Promise<Map<string, Family>> {
  const res = await fetch(`${opsUrl}/metrics`);
  expect(res.status).toBe(200);
  return parseExposition(await res.text());
}

/** The sum of the samples named `name` whose labels include `labels`. */
function sumOf(families: Map<string, Family>, name: string, labels: Record<string, string>): number {
  return [...families.values()]
    .flatMap((f) => f.samples)
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

/** The lines of a process's log that carry `alert`. */
const alertLines = async (name: string, alert: string) => logLines(name).filter((line) => line.alert === alert);

describe('the CONSUMER_LAG alert', () => {
  const NAME = 'alerts-lag';
  let stack: Stack;
  let redisProxy: TcpProxy;
  let redisUrl: string;
  let events: EventProducer;

  beforeAll(async () => {
    ({ proxy: redisProxy, redisUrl } = await proxiedRedis());
    stack = await startStack({ workers: 0, name: NAME });
    events = new EventProducer();
  });

  afterAll(async () => {
    await events?.close();
    await stack?.stop();
    await redisProxy?.close();
  });

  it('is logged and counted once when a bridge that cannot reach Redis falls more than the threshold behind, with the lag of every partition in /metrics', async () => {
    // The bridge's Redis (where its jobs go) behind a proxy; lag measured every 200 ms against a threshold of 15.
    const bridge = await stack.startBridge({ REDIS_URL: redisUrl, ALERT_CONSUMER_LAG_THRESHOLD: '15', KAFKA_LAG_LOG_INTERVAL_MS: '200' });
    const url = stack.opsUrl(bridge);
    const topic = stack.paymentsTopic;
    const lagOf = (m: Map<string, Family>, partition: number) =>
      sampleValue(m, 'coupon_kafka_consumer_lag', { topic, partition: String(partition) });
    await eventually(
      () => scrape(url),
      (m) => lagOf(m, 0) === 0,
      10_000,
      'lag measured',
    );

    // Redis goes away: the bridge's hand-over waits for it, nothing is committed, and the topic's lag grows.
    await redisProxy.pause('refuse');
    const payment = (partition: number) => {
      const event = paymentEvent('PAYMENT_COMPLETED', uniqueId('order'));
      return { key: event.orderId, value: JSON.stringify(event), partition };
    };
    await events.send(topic, [...Array.from({ length: 12 }, () => payment(0)), ...Array.from({ length: 8 }, () => payment(1))]);

    const [alert] = await eventually(
      () => alertLines(`${NAME}-bridge-1`, 'CONSUMER_LAG'),
      (lines) => lines.length > 0,
      15_000,
      'CONSUMER_LAG logged',
    );
    expect(alert).toMatchObject({
      level: 'warn',
      process: 'bridge',
      msg: 'consumer lag above threshold',
      topic,
      lag: 20,
      threshold: 15,
      partitions: { 0: 12, 1: 8, 2: 0, 3: 0, 4: 0, 5: 0 },
    });
    const lagging = await scrape(url);
    expect([0, 1, 2, 3, 4, 5].map((p) => lagOf(lagging, p))).toEqual([12, 8, 0, 0, 0, 0]);
    expect(sampleValue(lagging, 'coupon_alerts_total', { alert: 'CONSUMER_LAG' })).toBe(1);
    // The lag of the other topic is measured too, and is nothing.
    expect(sampleValue(lagging, 'coupon_kafka_consumer_lag', { topic: stack.userEventsTopic, partition: '0' })).toBe(0);

    // Still behind five measurements later: still one alert, not one per measurement. A measurement's
    // alert would be logged right after its own line, so before the next measurement's.
    const measuredLagging = () =>
      logLines(`${NAME}-bridge-1`).filter((l) => l.msg === 'consumer lag' && l.topic === topic && l.lag === 20).length;
    const soFar = measuredLagging();
    await eventually(
      async () => measuredLagging(),
      (n) => n >= soFar + 5,
      15_000,
      'five more lag measurements',
    );
    expect(await alertLines(`${NAME}-bridge-1`, 'CONSUMER_LAG')).toHaveLength(1);
    expect(sampleValue(await scrape(url), 'coupon_alerts_total', { alert: 'CONSUMER_LAG' })).toBe(1);

    // Redis back: the bridge hands the messages over and commits, and the lag falls to nothing.
    await redisProxy.resume();
    const caughtUp = await eventually(
      () => scrape(url),
      (m) => lagOf(m, 0) === 0 && lagOf(m, 1) === 0,
      20_000,
      'lag back to 0',
    );
    expect(sampleValue(caughtUp, 'coupon_kafka_messages_consumed_total', { topic })).toBe(20);
    expect(sampleValue(caughtUp, 'coupon_alerts_total', { alert: 'CONSUMER_LAG' })).toBe(1);
  });
});

describe('the JOB_FAILURES alert', () => {
  const NAME = 'alerts-job-failures';
  let stack: Stack;
  let pgProxy: TcpProxy;
  let databaseUrl: string;
  let api: Api;

  beforeAll(async () => {
    ({ proxy: pgProxy, databaseUrl } = await slowPostgres(0));
    stack = await startStack({ workers: 0, name: NAME });
    api = new Api(stack.baseUrl, 8);
  });

  afterAll(async () => {
    await api?.close();
    await stack?.stop();
    await pgProxy?.close();
  });

  it("is logged at error and counted once when more issue jobs than the threshold fail for good because the worker's Postgres is away", async () => {
    // Only the worker reaches Postgres through the proxy; the web, which creates the policy, does not.
    const worker: ChildProcess = await stack.startWorker({
      DATABASE_URL: databaseUrl,
      ALERT_JOB_FAILURES_THRESHOLD: '2',
      ALERT_JOB_FAILURES_WINDOW_MS: '60000',
    });
    const url = stack.opsUrl(worker);
    const policyId = await createPolicy(api);
    expect(sampleValue(await scrape(url), 'coupon_alerts_total', { alert: 'JOB_FAILURES' })).toBe(0);

    await pgProxy.pause('refuse');
    const started = Date.now();
    // One request at a time, so each is its own job: three failures for a threshold of two.
    const requests: { jobId: string; token: string }[] = [];
    for (const user of [uniqueId('jf1'), uniqueId('jf2'), uniqueId('jf3')]) {
      const token = await tokenFor(user);
      const reply = await api.post('/api/v1/coupons/issue', token, { policyId });
      expect(reply.status).toBe(202);
      requests.push({ jobId: reply.body.jobId as string, token });
    }
    // Five attempts each, 250 ms backoff doubling: about 4 s until they fail for good.
    const views = await Promise.all(requests.map((r) => api.settle(r.jobId, r.token, 25_000)));
    expect(views.map((v) => v.status)).toEqual(['failed', 'failed', 'failed']);
    expect(Date.now() - started).toBeLessThan(25_000);

    const lines = await eventually(
      () => alertLines(`${NAME}-worker-1`, 'JOB_FAILURES'),
      (l) => l.length > 0,
      5_000,
      'JOB_FAILURES logged',
    );
    expect(lines).toHaveLength(1);
    // On its last attempt a batch completes with its failed requests: those are what failed for good.
    expect(lines[0]).toMatchObject({
      level: 'error',
      process: 'worker',
      msg: 'jobs failing',
      alert: 'JOB_FAILURES',
      what: 'issue requests',
      count: 3,
      threshold: 2,
      windowMs: 60_000,
    });
    const metrics = await scrape(url);
    expect(sampleValue(metrics, 'coupon_alerts_total', { alert: 'JOB_FAILURES' })).toBe(1);
    expect(sumOf(metrics, 'coupon_issue_requests_total', { outcome: 'failed' })).toBe(3);
    expect(sampleValue(metrics, 'coupon_jobs_total', { queue: 'issue', name: 'issue-batch', outcome: 'retried' })).toBe(12);
    await pgProxy.resume();
    await stopProcess(worker);
  });
});
