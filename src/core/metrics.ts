// Prometheus metrics (prom-client): one registry per process, the metric objects every part of the
// code records into, and the text a `/metrics` scrape answers. Every metric is defined here; each
// process registers only the groups it records (exposeMetrics), so a scrape of the web does not list
// Kafka lag and a scrape of the bridge no HTTP histogram.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import { withTimeout } from './concurrency';
import { poolStats } from './postgres';

export const registry = new Registry();

/** Not registered anywhere until exposeMetrics() picks the groups of the running process. */
const none: Registry[] = [];

// ---- every process ----

/** Alert events (src/core/alerts.ts), one series per alert name. */
export const alertsTotal = new Counter({
  name: 'coupon_alerts_total',
  help: 'Alert events raised by this process (also logged with an `alert` field), by alert name.',
  labelNames: ['alert'] as const,
  registers: none,
});

// ---- web and worker ----

export const dbPoolConnections = new Gauge({
  name: 'coupon_db_pool_connections',
  help: "Connections of this process's Postgres pool, by state (in_use, idle).",
  labelNames: ['state'] as const,
  registers: none,
  collect() {
    const stats = poolStats();
    this.set({ state: 'in_use' }, stats?.using ?? 0);
    this.set({ state: 'idle' }, stats?.available ?? 0);
  },
});

export const dbPoolWaiting = new Gauge({
  name: 'coupon_db_pool_waiting',
  help: 'Queries of this process waiting for a Postgres connection (DATABASE_POOL_MAX all in use).',
  registers: none,
  collect() {
    this.set(poolStats()?.waiting ?? 0);
  },
});

// ---- web ----

export const httpRequestDuration = new Histogram({
  name: 'coupon_http_request_duration_seconds',
  help: 'HTTP request duration by method, matched route pattern and status code.',
  labelNames: ['method', 'route', 'status'] as const,
  // Long polls (GET /jobs/:id?waitMs=) take up to 10 s.
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  registers: none,
});

// ---- worker ----

export const jobsTotal = new Counter({
  name: 'coupon_jobs_total',
  help: 'Job attempts that ended, by queue, job name and outcome (succeeded, rejected, failed, retried).',
  labelNames: ['queue', 'name', 'outcome'] as const,
  registers: none,
});

export const jobDuration = new Histogram({
  name: 'coupon_job_duration_seconds',
  help: 'Time a job attempt ran on a worker (processedOn to finishedOn), by queue and job name.',
  labelNames: ['queue', 'name'] as const,
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
  registers: none,
});

export const issueRequestsTotal = new Counter({
  name: 'coupon_issue_requests_total',
  help: 'Issue requests answered (one job carries many), by outcome and refusal or failure code.',
  labelNames: ['outcome', 'reason'] as const,
  registers: none,
});

export const queueJobs = new Gauge({
  name: 'coupon_queue_jobs',
  help: 'Jobs in each queue by state (waiting, active, delayed, failed), read from Redis at scrape time.',
  labelNames: ['queue', 'state'] as const,
  registers: none,
  async collect() {
    await queueDepthSource?.(this);
  },
});

export const couponsIssuedTotal = new Counter({
  name: 'coupon_coupons_issued_total',
  help: 'Coupons written by this process, by policy.',
  labelNames: ['policy_id'] as const,
  registers: none,
});

export const couponsUsedTotal = new Counter({
  name: 'coupon_coupons_used_total',
  help: 'Coupons marked USED by a payment or an admin confirm in this process, by policy.',
  labelNames: ['policy_id'] as const,
  registers: none,
});

export const paymentConflictsTotal = new Counter({
  name: 'coupon_payment_conflicts_total',
  help: 'Payments recorded as a conflict (the coupon was taken meanwhile), never applied.',
  registers: none,
});

export const inboxEventsRedriven = new Counter({
  name: 'coupon_inbox_events_redriven_total',
  help: 'Events of the inbox whose job Redis had lost, added again by the inbox sweep, by source.',
  labelNames: ['source'] as const,
  registers: none,
});

// ---- bridge ----

export const kafkaConsumerLag = new Gauge({
  name: 'coupon_kafka_consumer_lag',
  help: "Messages of each partition the bridge's consumer group has not committed yet (last measurement).",
  labelNames: ['topic', 'partition'] as const,
  registers: none,
});

export const kafkaMessagesConsumed = new Counter({
  name: 'coupon_kafka_messages_consumed_total',
  help: 'Kafka messages handed over (made into jobs, dead-lettered or skipped), by topic.',
  labelNames: ['topic'] as const,
  registers: none,
});

export const paymentsAppliedInPlace = new Counter({
  name: 'coupon_bridge_payments_total',
  help: 'Payment events the bridge handled with PAYMENT_APPLY=bridge, by what became of them: applied, ignored (changed nothing), duplicate, or queued (made a job: not applicable yet, or the application failed).',
  labelNames: ['result'] as const,
  registers: none,
});

export const kafkaMessagesDeadLettered = new Counter({
  name: 'coupon_kafka_messages_dead_lettered_total',
  help: 'Kafka messages sent to <topic>.dlq, by source topic.',
  labelNames: ['topic'] as const,
  registers: none,
});

const GROUPS: Record<'web' | 'worker' | 'bridge', Metric[]> = {
  web: [httpRequestDuration, dbPoolConnections, dbPoolWaiting, issueRequestsTotal],
  worker: [
    dbPoolConnections,
    dbPoolWaiting,
    jobsTotal,
    jobDuration,
    issueRequestsTotal,
    queueJobs,
    couponsIssuedTotal,
    couponsUsedTotal,
    paymentConflictsTotal,
    inboxEventsRedriven,
  ],
  bridge: [
    dbPoolConnections,
    dbPoolWaiting,
    kafkaConsumerLag,
    kafkaMessagesConsumed,
    kafkaMessagesDeadLettered,
    paymentsAppliedInPlace,
    couponsUsedTotal,
    paymentConflictsTotal,
  ],
};

let defaultsOn = false;

/** Registers the metrics of this kind of process, the alert counter and Node's process metrics. Idempotent. */
export function exposeMetrics(kind: keyof typeof GROUPS): void {
  if (!defaultsOn) {
    defaultsOn = true;
    collectDefaultMetrics({ register: registry });
  }
  for (const metric of [alertsTotal, ...GROUPS[kind]]) {
    const name = (metric as unknown as { name: string }).name;
    if (!registry.getSingleMetric(name)) registry.registerMetric(metric);
  }
}

export const metricsContentType = registry.contentType;

/** The Prometheus text exposition of everything registered. */
export function metricsText(): Promise<string> {
  return registry.metrics();
}

// ---- queue depth, read on scrape ----

type DepthSource = (gauge: typeof queueJobs) => Promise<void>;
let queueDepthSource: DepthSource | undefined;

export const QUEUE_STATES = ['waiting', 'active', 'delayed', 'failed'] as const;

interface CountableQueue {
  name: string;
  getJobCounts(...types: string[]): Promise<Record<string, number>>;
}

/**
 * Reports the depth of these queues on every scrape. A Redis that does not answer within
 * `timeoutMs` must not hang the scrape: the gauge is then left empty for that scrape rather than
 * showing stale numbers.
 */
export function trackQueueDepth(queues: CountableQueue[], timeoutMs = 1_000): void {
  queueDepthSource = async (gauge) => {
    try {
      const counts = await withTimeout(
        Promise.all(queues.map(async (q) => [q.name, await q.getJobCounts(...QUEUE_STATES)] as const)),
        timeoutMs,
        'queue depth: no answer',
      );
      gauge.reset();
      for (const [queue, byState] of counts) for (const state of QUEUE_STATES) gauge.set({ queue, state }, byState[state] ?? 0);
    } catch {
      gauge.reset();
    }
  };
}
