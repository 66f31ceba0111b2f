// Metrics and alerts: every process (web, worker, bridge) serves Prometheus text on /metrics, every
// metric the alert rules read is exported, the counters move with real traffic, alert events are
// logged and counted, and the worker's and bridge's ops servers answer their health checks.
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import pino from 'pino';
import { parse as parseYaml } from 'yaml';
import { readiness, startOpsServer, type Phase } from '../src/core/ops-server';
import { closeDb, couponsOf } from './support/db';
import {
  couponRow,
  createCheckoutPolicy,
  eventually,
  EventProducer,
  paymentEvent,
  reserveAndSettle,
  shopperWith,
} from './support/checkout';
import { policyBody, uniqueId } from './support/fixtures';
import { Api, mapLimit } from './support/http';
import { metricNamesIn, parseExposition, sampleValue, type Family } from './support/prometheus';
import { logFile, logLinesWhen, startStack, stopProcess, type Stack } from './support/stack';
import { slowPostgres } from './support/tcp-proxy';
import { adminToken, tokenFor } from './support/tokens';

const ROOT = join(__dirname, '..');
const RULES_FILE = join(ROOT, 'docs/prometheus/alerts.yml');
const RUNBOOK_FILE = join(ROOT, 'docs/RUNBOOK.md');
/** Series Prometheus makes itself (per scrape target, and for its alerts), which no process of ours exports. */
const PROMETHEUS_BUILTINS = new Set([
  'up',
  'scrape_duration_seconds',
  'scrape_samples_scraped',
  'scrape_samples_post_metric_relabeling',
  'scrape_series_added',
  'ALERTS',
  'ALERTS_FOR_STATE',
]);
const RUNBOOK_ANCHORS = [
  'lock-timeouts',
  'redis-down',
  'events-lost-by-redis',
  'consumer-lag',
  'slow-queries',
  'connection-pools',
  'job-failures',
  'payment-conflicts',
  'sold-out',
  'first-look',
];

interface Rule {
  alert: string;
  expr: string;
  for: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

function loadRules(): Rule[] {
  const doc = parseYaml(readFileSync(RULES_FILE, 'utf8')) as { groups: { name: string; rules: Rule[] }[] };
  return doc.groups.flatMap((g) => g.rules);
}

/** Family names the rules read: a histogram's _bucket/_sum/_count series belong to its family. */
function familyOf(name: string, exported: Map<string, Family>): string | undefined {
  if (exported.get(name)?.type) return name;
  const m = /^(.*)_(bucket|sum|count)$/.exec(name);
  const base = m?.[1] && exported.get(m[1]);
  return base && (base.type === 'histogram' || (base.type === 'summary' && m?.[2] !== 'bucket')) ? base.name : undefined;
}

describe('the alert rules file', () => {
  const rules = loadRules();

  it('parses, and every rule has an expression, a for, a severity, a summary, a description and a runbook section', () => {
    expect(rules.length).toBeGreaterThan(5);
    const runbook = readFileSync(RUNBOOK_FILE, 'utf8');
    const headings = new Set(
      [...runbook.matchAll(/^#{1,6} (.+)$/gm)].map((m) =>
        (m[1] as string)
          .trim()
          .toLowerCase()
          .replace(/[^a-z0-9 -]/g, '')
          .replace(/ /g, '-'),
      ),
    );
    for (const rule of rules) {
      expect(rule).toEqual(
        expect.objectContaining({
          alert: expect.stringMatching(/^[A-Z][A-Za-z0-9]+$/),
          expr: expect.any(String),
          for: expect.stringMatching(/^\d+[smh]$/),
        }),
      );
      expect(['info', 'warning', 'critical']).toContain(rule.labels?.severity);
      expect(rule.annotations).toEqual(expect.objectContaining({ summary: expect.any(String), description: expect.any(String) }));
      const anchor = /^docs\/RUNBOOK\.md#([a-z-]+)$/.exec(rule.annotations.runbook_url ?? '')?.[1];
      expect({ rule: rule.alert, anchor }).toEqual({ rule: rule.alert, anchor: expect.any(String) });
      expect(RUNBOOK_ANCHORS).toContain(anchor);
      expect({ rule: rule.alert, inRunbook: headings.has(anchor as string) }).toEqual({ rule: rule.alert, inRunbook: true });
      expect(rule.expr).not.toContain('__name__');
    }
    expect(new Set(rules.map((r) => r.alert)).size).toBe(rules.length);
  });

  it('tells metric names from functions, keywords, label lists, strings and durations', () => {
    expect(
      metricNamesIn(
        'sum by (queue, le) (rate(a_total{x="rate(b_total)", y=~"c|d"}[5m] offset 1h)) / on (queue) group_left (name) max without (instance) (b_bucket) > bool 0.5e1',
      ).sort(),
    ).toEqual(['a_total', 'b_bucket']);
    expect(
      metricNamesIn('histogram_quantile(0.95, sum(rate(h_bucket[5m])) by (le)) and ignoring(x) up == 0 unless absent(g)').sort(),
    ).toEqual(['g', 'h_bucket', 'up']);
  });
});

describe('an ops server', () => {
  const log = pino({ level: 'silent' });
  const get = async (url: string) => {
    const res = await fetch(url);
    return { status: res.status, type: res.headers.get('content-type'), body: await res.text() };
  };

  it('answers /health/ready 200 only while running with every check answering; 503 while starting, draining or a check hangs', async () => {
    let phase: Phase = 'starting';
    let hang = false;
    const checks = { db: () => Promise.resolve(1), slow: () => (hang ? new Promise(() => undefined) : Promise.resolve(1)) };
    const ops = await startOpsServer({ port: 0, log, ready: () => readiness(checks, () => phase) });
    const base = `http://127.0.0.1:${ops.port}`;
    try {
      expect(await get(`${base}/health/live`)).toMatchObject({ status: 200 });
      expect(JSON.parse((await get(`${base}/health/ready`)).body)).toEqual({ status: 'starting', checks: { db: 'ok', slow: 'ok' } });
      phase = 'running';
      expect(await get(`${base}/health/ready`)).toMatchObject({
        status: 200,
        body: JSON.stringify({ status: 'ready', checks: { db: 'ok', slow: 'ok' } }),
      });
      hang = true;
      const started = Date.now();
      expect(await get(`${base}/health/ready`)).toMatchObject({
        status: 503,
        body: JSON.stringify({ status: 'unavailable', checks: { db: 'ok', slow: 'down' } }),
      });
      expect(Date.now() - started).toBeLessThan(3_000);
      hang = false;
      phase = 'draining';
      expect(await get(`${base}/health/ready`)).toMatchObject({
        status: 503,
        body: JSON.stringify({ status: 'draining', checks: { db: 'ok', slow: 'ok' } }),
      });
      const metrics = await get(`${base}/metrics`);
      expect(metrics.status).toBe(200);
      expect(metrics.type).toMatch(/^text\/plain; version=0\.0\.4/);
      parseExposition(metrics.body);
      expect((await get(`${base}/nothing`)).status).toBe(404);
    } finally {
      await ops.close();
    }
  });

  it('takes a free port instead of failing when its port is taken', async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '0.0.0.0', resolve));
    const taken = (holder.address() as { port: number }).port;
    const ops = await startOpsServer({ port: taken, log, ready: () => readiness({}, () => 'running') });
    try {
      expect(ops.port).not.toBe(taken);
      expect((await get(`http://127.0.0.1:${ops.port}/health/ready`)).status).toBe(200);
    } finally {
      await ops.close();
      holder.close();
    }
  });
});

describe('metrics of a running stack', () => {
  const NAME = 'metrics';
  let stack: Stack;
  let api: Api;
  let admin: string;
  let events: EventProducer;
  let worker: ChildProcess;
  let bridge: ChildProcess;
  const scrape = async (url: string) => {
    const res = await fetch(`${url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    return parseExposition(await res.text());
  };

  beforeAll(async () => {
    stack = await startStack({ workers: 1, bridge: true, name: NAME });
    api = new Api(stack.baseUrl, 32);
    admin = await adminToken();
    events = new EventProducer();
    worker = stack.workers[0] as ChildProcess;
    bridge = stack.bridges[0] as ChildProcess;
  });

  afterAll(async () => {
    await events?.close();
    await api?.close();
    await stack?.stop();
    await closeDb();
  });

  let soldOutPolicy: string;
  let checkoutPolicy: string;

  it('sells out a policy of 10: POLICY_90_PERCENT and POLICY_SOLD_OUT are logged at warn with the policy and counted', async () => {
    const created = await api.post('/api/v1/coupons/policies', admin, policyBody({ totalQuantity: 10 }));
    expect(created.status).toBe(201);
    soldOutPolicy = created.body.id as string;
    // One at a time, so the 11th finds the stock gone.
    const users = Array.from({ length: 11 }, (_, i) => uniqueId(`m${i}`));
    const results = await mapLimit(users, 1, async (user) => {
      const token = await tokenFor(user);
      const reply = await api.post('/api/v1/coupons/issue', token, { policyId: soldOutPolicy });
      expect(reply.status).toBe(202);
      return api.settle(reply.body.jobId, token);
    });
    expect(results.map((r) => r.status)).toEqual([...Array(10).fill('succeeded'), 'rejected']);
    expect(results[10].reason.code).toBe('SOLD_OUT');
    expect(await couponsOf(soldOutPolicy)).toHaveLength(10);

    const alerts = await logLinesWhen(`${NAME}-worker-1`, (l) => l.policyId === soldOutPolicy && typeof l.alert === 'string', 2);
    expect(alerts.map((l) => [l.alert, l.level])).toEqual([
      ['POLICY_90_PERCENT', 'warn'],
      ['POLICY_SOLD_OUT', 'warn'],
    ]);
    expect(alerts[1]).toMatchObject({ total: 10, process: 'worker' });

    const workerMetrics = await scrape(stack.opsUrl(worker));
    expect(sampleValue(workerMetrics, 'coupon_alerts_total', { alert: 'POLICY_SOLD_OUT' })).toBeGreaterThanOrEqual(1);
    expect(sampleValue(workerMetrics, 'coupon_alerts_total', { alert: 'POLICY_90_PERCENT' })).toBeGreaterThanOrEqual(1);
    expect(sampleValue(workerMetrics, 'coupon_coupons_issued_total', { policy_id: soldOutPolicy })).toBe(10);
    // A sale's refusals are decided (and counted) by the web that admitted them; its wins by the worker.
    const webMetrics = await scrape(stack.baseUrl);
    expect(sampleValue(webMetrics, 'coupon_issue_requests_total', { outcome: 'rejected', reason: 'SOLD_OUT' })).toBeGreaterThanOrEqual(1);
    expect(sampleValue(workerMetrics, 'coupon_issue_requests_total', { outcome: 'succeeded' })).toBeGreaterThanOrEqual(10);
  });

  it('counts a used coupon by policy, a payment conflict (with its alert) and a dead letter', async () => {
    checkoutPolicy = await createCheckoutPolicy(api);
    const shopper = await shopperWith(api, checkoutPolicy, 2);
    const [paid, other] = shopper.coupons as [string, string];
    const paidOrder = uniqueId('order');
    const reserved = await reserveAndSettle(api, shopper, paid, paidOrder);
    expect(reserved.status).toBe('succeeded');
    // A payment naming a user who does not own the order: a conflict.
    const otherOrder = uniqueId('order');
    expect((await reserveAndSettle(api, shopper, other, otherOrder)).status).toBe('succeeded');

    await events.publish(
      stack.paymentsTopic,
      paymentEvent('PAYMENT_COMPLETED', paidOrder, { reservationId: reserved.result.reservationId }),
    );
    await events.publish(stack.paymentsTopic, paymentEvent('PAYMENT_COMPLETED', otherOrder, { userId: uniqueId('someone-else') }));
    await events.send(stack.paymentsTopic, [{ key: 'junk', value: 'not json' }]);
    await eventually(
      () => couponRow(paid),
      (c) => c?.status === 'USED',
      30_000,
      'coupon USED',
    );

    // Used coupons are counted by policy within about a second of their payment.
    const workerMetrics = await eventually(
      () => scrape(stack.opsUrl(worker)),
      (m) =>
        sampleValue(m, 'coupon_coupons_used_total', { policy_id: checkoutPolicy }) === 1 &&
        (sampleValue(m, 'coupon_payment_conflicts_total') ?? 0) >= 1,
      15_000,
      'used and conflict counters',
    );
    expect(sampleValue(workerMetrics, 'coupon_alerts_total', { alert: 'PAYMENT_CONFLICT' })).toBeGreaterThanOrEqual(1);
    expect(
      sampleValue(workerMetrics, 'coupon_jobs_total', { queue: 'payments', name: 'payment', outcome: 'succeeded' }),
    ).toBeGreaterThanOrEqual(2);
    const conflictLine = (await readFile(logFile(`${NAME}-worker-1`), 'utf8'))
      .split('\n')
      .find((l) => l.includes('"alert":"PAYMENT_CONFLICT"'));
    expect(JSON.parse(conflictLine as string)).toMatchObject({
      level: 'warn',
      alert: 'PAYMENT_CONFLICT',
      msg: expect.stringMatching(/^payment conflict: /),
    });

    await eventually(
      () => scrape(stack.opsUrl(bridge)),
      (m) =>
        (sampleValue(m, 'coupon_kafka_messages_dead_lettered_total', { topic: stack.paymentsTopic }) ?? 0) >= 1 &&
        (sampleValue(m, 'coupon_kafka_messages_consumed_total', { topic: stack.paymentsTopic }) ?? 0) >= 3 &&
        sampleValue(m, 'coupon_kafka_consumer_lag', { topic: stack.paymentsTopic }) !== undefined,
      15_000,
      'bridge counters and lag',
    );
  });

  it('Every metric named in the alert rules is exported; /metrics parses as Prometheus text.', async () => {
    // A request no route matches, for the unmatched label.
    expect((await api.get('/no/such/route')).status).toBe(404);
    const web = await scrape(stack.baseUrl);
    const workerMetrics = await scrape(stack.opsUrl(worker));
    const bridgeMetrics = await scrape(stack.opsUrl(bridge));
    const processes = { web, worker: workerMetrics, bridge: bridgeMetrics };

    const named = new Set(loadRules().flatMap((r) => metricNamesIn(r.expr)));
    expect(named.size).toBeGreaterThan(5);
    const missing: string[] = [];
    for (const name of named) {
      if (PROMETHEUS_BUILTINS.has(name)) continue;
      const exportedBy = Object.entries(processes).filter(([, families]) => {
        const family = familyOf(name, families);
        return family !== undefined && families.get(family)?.help !== undefined;
      });
      if (exportedBy.length === 0) missing.push(name);
    }
    expect(missing).toEqual([]);

    // Each process exports its own metrics, with Node's process metrics and the alert counter.
    for (const families of Object.values(processes)) {
      for (const name of ['process_cpu_seconds_total', 'nodejs_eventloop_lag_p99_seconds', 'coupon_alerts_total'])
        expect(families.get(name)?.type).toBeDefined();
      for (const name of families.keys()) expect(name).toMatch(/^(coupon_|process_|nodejs_)/);
    }
    expect(web.has('coupon_jobs_total')).toBe(false);
    expect(workerMetrics.has('coupon_http_request_duration_seconds')).toBe(false);
    expect(bridgeMetrics.has('coupon_kafka_consumer_lag')).toBe(true);

    // HTTP durations by route pattern, never by raw path.
    expect(
      sampleValue(web, 'coupon_http_request_duration_seconds_count', { method: 'POST', route: '/api/v1/coupons/issue', status: '202' }),
    ).toBeGreaterThanOrEqual(11);
    expect(
      sampleValue(web, 'coupon_http_request_duration_seconds_count', { method: 'GET', route: '/api/v1/jobs/:jobId', status: '200' }),
    ).toBeGreaterThanOrEqual(11);
    expect(
      sampleValue(web, 'coupon_http_request_duration_seconds_count', { method: 'GET', route: 'unmatched', status: '404' }),
    ).toBeGreaterThanOrEqual(1);
    const routes = new Set(web.get('coupon_http_request_duration_seconds')?.samples.map((s) => s.labels.route));
    for (const route of routes) expect(route).not.toMatch(/iss_|rsv_|policy-|[0-9a-f]{8}-[0-9a-f]{4}/);

    // Jobs by queue and outcome, their durations, and the queues' depth read at scrape time.
    expect(
      sampleValue(workerMetrics, 'coupon_jobs_total', { queue: 'issue', name: 'issue-batch', outcome: 'succeeded' }),
    ).toBeGreaterThanOrEqual(1);
    expect(sampleValue(workerMetrics, 'coupon_job_duration_seconds_count', { queue: 'issue', name: 'issue-batch' })).toBeGreaterThanOrEqual(
      1,
    );
    expect(sampleValue(workerMetrics, 'coupon_coupons_issued_total', { policy_id: soldOutPolicy })).toBe(10);
    for (const queue of ['issue', 'checkout', 'payments']) {
      for (const state of ['waiting', 'active', 'delayed', 'failed'])
        expect(sampleValue(workerMetrics, 'coupon_queue_jobs', { queue, state })).toBeGreaterThanOrEqual(0);
    }
    expect(sampleValue(workerMetrics, 'coupon_db_pool_connections', { state: 'idle' })).toBeGreaterThanOrEqual(0);
  });

  it("answers the worker's and the bridge's /health/live and /health/ready with 200", async () => {
    for (const [child, checks] of [
      [worker, { postgres: 'ok', redis: 'ok' }],
      [bridge, { postgres: 'ok', redis: 'ok', kafka: 'ok' }],
    ] as const) {
      const live = await fetch(`${stack.opsUrl(child)}/health/live`);
      expect(live.status).toBe(200);
      const ready = await fetch(`${stack.opsUrl(child)}/health/ready`);
      expect({ status: ready.status, body: await ready.json() }).toEqual({ status: 200, body: { status: 'ready', checks } });
    }
  });

  it('answers /health/ready 503 from the moment a worker gets SIGTERM while it finishes its job', async () => {
    // A worker whose Postgres is 300 ms away each way holds its job long enough to watch it drain.
    const { proxy, databaseUrl } = await slowPostgres(300);
    try {
      await stopProcess(worker);
      const slow = await stack.startWorker({ DATABASE_URL: databaseUrl });
      const url = stack.opsUrl(slow);
      const policy = await api.post('/api/v1/coupons/policies', admin, policyBody({ totalQuantity: 5 }));
      const user = uniqueId('drain');
      const token = await tokenFor(user);
      const reply = await api.post('/api/v1/coupons/issue', token, { policyId: policy.body.id });
      expect(reply.status).toBe(202);
      await eventually(
        () => scrape(url),
        (m) => (sampleValue(m, 'coupon_queue_jobs', { queue: 'issue', state: 'active' }) ?? 0) >= 1,
        15_000,
        'job active',
      );

      const exited = new Promise<number | null>((resolve) => slow.once('exit', (code) => resolve(code)));
      slow.kill('SIGTERM');
      await new Promise((resolve) => setTimeout(resolve, 20));
      const answers: { status: number; body: unknown }[] = [];
      while (slow.exitCode === null && slow.signalCode === null) {
        const answer = await fetch(`${url}/health/ready`).then(
          async (r) => ({ status: r.status, body: await r.json() }),
          () => null,
        );
        if (!answer) break; // closed: the process is on its way out
        answers.push(answer);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      expect(answers.length).toBeGreaterThan(0);
      for (const answer of answers) expect(answer).toEqual({ status: 503, body: { status: 'draining', checks: expect.any(Object) } });
      expect(await exited).toBe(0);
      expect((await api.settle(reply.body.jobId, token)).status).toBe('succeeded');
    } finally {
      await proxy.close();
    }
  });
});
