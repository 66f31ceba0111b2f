// The Kafka client. Everything that speaks Kafka goes through here, so the client library can change.
import { Kafka, logLevel, Partitioners, type Consumer, type Producer } from 'kafkajs';
import { config } from './config';
import type { Logger } from './logger';

const LEVEL_NAMES: Record<number, 'error' | 'warn' | 'info' | 'debug'> = {
  [logLevel.ERROR]: 'error',
  [logLevel.WARN]: 'warn',
  [logLevel.INFO]: 'info',
  [logLevel.DEBUG]: 'debug',
};

export function createKafka(log: Logger): Kafka {
  const cfg = config();
  return new Kafka({
    clientId: cfg.KAFKA_CLIENT_ID,
    brokers: cfg.KAFKA_BROKERS,
    connectionTimeout: 3_000,
    retry: { initialRetryTime: 300, retries: 10 },
    logLevel: logLevel.WARN,
    logCreator: () => (entry) => {
      const level = LEVEL_NAMES[entry.level] ?? 'info';
      const { message, ...rest } = entry.log;
      log[level]({ kafka: entry.namespace, ...rest }, message);
    },
  });
}

export type { Consumer, Producer, Kafka };

/** Creates the topics that do not exist yet (with their dead-letter topics when asked), and waits for their leaders. */
export async function createTopicsIfMissing(kafka: Kafka, topics: string[], numPartitions: number): Promise<string[]> {
  const admin = kafka.admin();
  await admin.connect();
  try {
    const existing = new Set(await admin.listTopics());
    const missing = topics.filter((t) => !existing.has(t));
    if (missing.length > 0) {
      await admin.createTopics({ topics: missing.map((topic) => ({ topic, numPartitions })), waitForLeaders: true });
    }
    return missing;
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

/**
 * A producer that waits for every in-sync replica (acks -1 on each send) and partitions by key with
 * the Java client's murmur2, so a key lands where other clients put it.
 */
export function createProducer(kafka: Kafka): Producer {
  return kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: false });
}
