// The Kafka bridge process: turns payment events into checkout jobs and user events into issue jobs
// (with PAYMENT_APPLY=bridge it applies payments itself, and only those that cannot take effect yet
// become jobs). It creates its topics (and their dead-letter topics) if they are missing, consumes
// every partition concurrently, commits an offset only once its messages are in the Postgres inbox
// and their jobs in Redis (or their effect in Postgres), or dead letters in Kafka, and logs its lag.
import { initAlertSeries } from '../core/alerts';
import { config, opsPortOf } from '../core/config';
import { createKafka, createTopicsIfMissing } from '../core/kafka';
import { logger, type Logger } from '../core/logger';
import { exposeMetrics } from '../core/metrics';
import type { Phase } from '../core/ops-server';
import { closeSequelize, sequelize } from '../core/postgres';
import { createRedis, waitForReady } from '../core/redis';
import { createQueues } from '../queues/connection';
import { initModels } from '../storage';
import { initUserCouponCache } from '../storage/cache/user-coupon-cache';
import { startUsageMetrics } from '../observability/usage-metrics';
import { startBridgeConsumer } from './consumer';
import { applyPaymentsInPlace } from './in-place';
import { fixKafkajsIdleLoop } from './kafkajs-idle';
import { scheduleLagReport } from './lag';
import { startBridgeOps } from './ops';
import { paymentsRoute, userEventsRoute } from './topics';

async function main(): Promise<void> {
  const cfg = config();
  const log = logger().child({ process: 'bridge' });
  // Before the first Kafka client: without it every connection wakes the process every millisecond.
  if (!fixKafkajsIdleLoop())
    log.warn('kafkajs is not 2.2.4: its idle-loop fix (src/bridge/kafkajs-idle.ts) was not applied; check whether it is still needed');
  const kafka = createKafka(log);
  const queues = createQueues();
  exposeMetrics('bridge');
  initAlertSeries(cfg.PAYMENT_APPLY === 'bridge' ? ['CONSUMER_LAG', 'PAYMENT_CONFLICT'] : ['CONSUMER_LAG']);
  // Ready once consuming, while Redis and Kafka answer; 503 from the first moment of a shutdown.
  let phase: Phase = 'starting';
  const ops = await startBridgeOps({ port: opsPortOf(cfg, 'BRIDGE_OPS_PORT'), kafka, queues, log, phase: () => phase });
  await waitForReady(queues.connection, 30_000);
  await sequelize().authenticate();

  const routes = [paymentsRoute(cfg.KAFKA_PAYMENTS_TOPIC), userEventsRoute(cfg.KAFKA_USER_EVENTS_TOPIC)];
  const topics = routes.map((r) => r.topic);
  const admin = kafka.admin();
  await admin.connect();
  const created = await createTopicsIfMissing(admin, topics, cfg.KAFKA_TOPIC_PARTITIONS).finally(() => admin.disconnect());
  if (created.length > 0) log.info({ topics: created, partitions: cfg.KAFKA_TOPIC_PARTITIONS }, 'kafka topics created');

  let stopping = false;
  // Filled once the consumer and the lag report run; a signal before that stops what exists.
  const stops: { consumer?: () => Promise<void>; lag?: () => Promise<void>; inPlace?: () => Promise<void> } = {};
  const shutdown = async (signal: string, exitCode = 0) => {
    if (stopping) return;
    stopping = true;
    phase = 'draining';
    log.info({ signal }, 'bridge stopping: finishing the batches in hand');
    await stops.consumer?.();
    await stops.lag?.();
    await stops.inPlace?.();
    await queues.close();
    await closeSequelize();
    await ops.close();
    log.info('bridge stopped');
    process.exit(exitCode);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));

  // PAYMENT_APPLY=bridge: payments take effect here (src/bridge/in-place.ts), with what a worker
  // applying them has: the models, the user coupon cache to drop, the used-coupon counts.
  const inPlace = cfg.PAYMENT_APPLY === 'bridge' ? startInPlacePayments(log) : undefined;
  if (inPlace) stops.inPlace = inPlace.stop;

  const bridge = await startBridgeConsumer({
    db: sequelize(),
    applyInPlace: inPlace?.apply,
    kafka,
    queues,
    log,
    routes,
    onFatal: (error) => {
      log.fatal({ err: error }, 'kafka consumer stopped for good; exiting so the process is restarted');
      void shutdown('consumer crash', 1);
    },
  });
  stops.consumer = bridge.stop;
  stops.lag = scheduleLagReport(kafka, cfg.KAFKA_GROUP_ID, topics, cfg.KAFKA_LAG_LOG_INTERVAL_MS, log, {
    alertAbove: cfg.ALERT_CONSUMER_LAG_THRESHOLD,
  }).stop;
  if (!stopping) phase = 'running';
  log.info({ brokers: cfg.KAFKA_BROKERS, groupId: cfg.KAFKA_GROUP_ID, topics }, 'bridge consuming');
}

/** What applying payments in the bridge needs, started; `stop` counts the last used coupons and closes its Redis connection. */
function startInPlacePayments(log: Logger) {
  const db = initModels(sequelize());
  // The web's kind of connection: a Redis that stops answering fails its commands after
  // REDIS_COMMAND_TIMEOUT_MS instead of holding the partition (the event then goes as a job).
  const redis = createRedis('ingress');
  initUserCouponCache(redis);
  const stopUsage = startUsageMetrics(log);
  log.info('payments are applied in the bridge (PAYMENT_APPLY=bridge); only those that cannot take effect yet become jobs');
  return {
    apply: applyPaymentsInPlace({ db, log }),
    async stop() {
      await stopUsage();
      redis.disconnect();
    },
  };
}

main().catch((error: unknown) => {
  logger().fatal({ err: error }, 'bridge failed to start');
  process.exit(1);
});
