// The Kafka client. Everything that speaks Kafka goes through here, so the client library can change.
import { Kafka, logLevel, Partitioners, type Admin, type Consumer, type Producer } from 'kafkajs';
import { withTimeout } from './concurrency';
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

/** Where the messages of `topic` that cannot become jobs go. */
export const dlqTopicOf = (topic: string) => `${topic}.dlq`;

/**
 * Creates those of the topics, and of their dead-letter topics, that do not exist yet, and waits
 * until every partition of them has a leader; answers which it created.
 */
export async function createTopicsIfMissing(admin: Admin, topics: string[], numPartitions: number, timeoutMs = 15_000): Promise<string[]> {
  const existing = new Set(await admin.listTopics());
  const missing = [...topics, ...topics.map(dlqTopicOf)].filter((t) => !existing.has(t));
  if (missing.length > 0) {
    // kafkajs's own waitForLeaders retries only LEADER_NOT_AVAILABLE, but a KRaft broker answers
    // UNKNOWN_TOPIC_OR_PARTITION for a moment after a create; waitForLeaders below retries both.
    await admin.createTopics({ topics: missing.map((topic) => ({ topic, numPartitions })), waitForLeaders: false });
    await waitForLeaders(admin, missing, timeoutMs);
  }
  return missing;
}

const NOT_YET = new Set(['UNKNOWN_TOPIC_OR_PARTITION', 'LEADER_NOT_AVAILABLE']);

/** The protocol error behind `error`: kafkajs wraps the last one when it runs out of retries. */
const errorType = (error: unknown): string | undefined => {
  const e = error as { type?: string; cause?: { type?: string } } | undefined;
  return e?.type ?? e?.cause?.type;
};

async function waitForLeaders(admin: Admin, topics: string[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      // Bounded by the deadline too: with the client's own retries one call can take a while.
      const { topics: found } = await withTimeout(
        admin.fetchTopicMetadata({ topics }),
        Math.max(1, deadline - Date.now()),
        'topic metadata',
      );
      if (found.length === topics.length && found.every((t) => t.partitions.length > 0 && t.partitions.every((p) => p.leader >= 0))) return;
    } catch (error) {
      // Not yet known or led: ask again. A timeout past the deadline ends in the error below.
      if (!NOT_YET.has(errorType(error) ?? '') && Date.now() <= deadline) throw error;
    }
    if (Date.now() > deadline) throw new Error(`topics without leaders after ${timeoutMs} ms: ${topics.join(', ')}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * A producer that waits for every in-sync replica (acks -1 on each send) and partitions by key with
 * the Java client's murmur2, so a key lands where other clients put it.
 */
export function createProducer(kafka: Kafka): Producer {
  return kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: false });
}
