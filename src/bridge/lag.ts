// Consumer lag: how many messages of each topic the bridge's group has not yet handed over (the log
// end offset minus the committed offset, per partition). Measured every KAFKA_LAG_LOG_INTERVAL_MS:
// logged, exported as coupon_kafka_consumer_lag{topic,partition}, and a CONSUMER_LAG alert when a
// topic's lag passes the threshold.
import type { Admin, Kafka } from 'kafkajs';
import { raiseAlert } from '../core/alerts';
import type { Logger } from '../core/logger';
import { kafkaConsumerLag } from '../core/metrics';

export interface TopicLag {
  topic: string;
  total: number;
  partitions: Record<number, number>;
}

export async function measureLag(admin: Admin, groupId: string, topic: string): Promise<TopicLag> {
  const [ends, committed] = await Promise.all([admin.fetchTopicOffsets(topic), admin.fetchOffsets({ groupId, topics: [topic] })]);
  const committedBy = new Map<number, bigint>();
  for (const p of committed[0]?.partitions ?? []) committedBy.set(p.partition, BigInt(p.offset));
  const partitions: Record<number, number> = {};
  let total = 0;
  for (const end of ends) {
    const at = committedBy.get(end.partition) ?? -1n;
    // No commit yet: everything since the earliest retained message is waiting.
    const from = at < 0n ? BigInt(end.low) : at;
    const lag = Number(BigInt(end.high) - from);
    partitions[end.partition] = Math.max(0, lag);
    total += Math.max(0, lag);
  }
  return { topic, total, partitions };
}

export function scheduleLagReport(
  kafka: Kafka,
  groupId: string,
  topics: string[],
  everyMs: number,
  log: Logger,
  opts: { alertAbove?: number } = {},
): { latest: () => TopicLag[]; stop: () => Promise<void> } {
  const admin = kafka.admin();
  let latest: TopicLag[] = [];
  // Topics whose lag is above the threshold: alerted once when it passes it, again only after it fell back.
  const lagging = new Set<string>();
  let connected: Promise<void> | undefined;
  let stopped = false;
  const report = async () => {
    connected ??= admin.connect();
    await connected;
    latest = await Promise.all(topics.map((t) => measureLag(admin, groupId, t)));
    for (const lag of latest) {
      log.info({ topic: lag.topic, lag: lag.total, partitions: lag.partitions }, 'consumer lag');
      for (const [partition, value] of Object.entries(lag.partitions)) kafkaConsumerLag.set({ topic: lag.topic, partition }, value);
      if (opts.alertAbove === undefined) continue;
      if (lag.total > opts.alertAbove) {
        if (!lagging.has(lag.topic))
          raiseAlert(
            log,
            'CONSUMER_LAG',
            { topic: lag.topic, lag: lag.total, threshold: opts.alertAbove, partitions: lag.partitions },
            'warn',
            'consumer lag above threshold',
          );
        lagging.add(lag.topic);
      } else {
        lagging.delete(lag.topic);
      }
    }
  };
  const timer = setInterval(() => {
    if (!stopped) report().catch((error: unknown) => log.warn({ err: error }, 'consumer lag not measured'));
  }, everyMs);
  timer.unref();
  return {
    latest: () => latest,
    async stop() {
      stopped = true;
      clearInterval(timer);
      if (connected) await admin.disconnect().catch(() => undefined);
    },
  };
}
