// The Kafka bridge process: turns payment and user events into jobs. For now it connects to the
// brokers, reports the cluster it sees and stays up, so operators can check the wiring.
import { config } from '../../core/config';
import { createKafka } from '../../core/kafka';
import { logger } from '../../core/logger';

async function main(): Promise<void> {
  const cfg = config();
  const log = logger().child({ process: 'bridge' });
  const kafka = createKafka(log);
  const admin = kafka.admin();
  await admin.connect();
  const cluster = await admin.describeCluster();
  const keepAlive = setInterval(() => undefined, 60_000);

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'bridge stopping');
    clearInterval(keepAlive);
    await admin.disconnect().catch(() => undefined);
    log.info('bridge stopped');
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  // Say "ready" only once a signal can no longer kill the process without its shutdown.
  log.info(
    { brokers: cluster.brokers.map((b) => `${b.host}:${b.port}`), clusterId: cluster.clusterId, topics: [cfg.KAFKA_PAYMENTS_TOPIC, cfg.KAFKA_USER_EVENTS_TOPIC] },
    'bridge connected to kafka',
  );
}

main().catch((error: unknown) => {
  logger().fatal({ err: error }, 'bridge failed to start');
  process.exit(1);
});
