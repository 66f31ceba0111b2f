// The bridge's consumer: Kafka messages in, BullMQ jobs out, at least once and never blocked by a bad
// message. For each batch of a partition: turn messages into jobs, write the events to the inbox in
// Postgres (one statement; I11: from there a job Redis lost is added again), add the jobs (ids
// derived from event ids, so a redelivery re-adds the same job, a no-op), send what cannot become a
// job to `<topic>.dlq` with the reason, and only then commit the offset after them (and nothing
// beyond it; the commit request itself goes every KAFKA_COMMIT_INTERVAL_MS, src/bridge/offsets.ts).
// A crash anywhere before the commit redelivers the batch; the inbox's unique event key, the derived
// job ids and processed_events absorb it. The partitions of one fetch are handled at once, and what
// they hand over in the same turn goes as one inbox statement and one Redis round trip (handOver,
// below). With PAYMENT_APPLY=bridge, a payment is applied right after its inbox write instead of
// becoming a job, unless it cannot take effect yet (src/bridge/in-place.ts); the offset still moves
// only after that.
import type { Sequelize } from 'sequelize';
import type { Consumer, EachBatchPayload, Kafka, KafkaMessage, Producer, TopicPartitionOffsetAndMetadata } from 'kafkajs';
import { config } from '../core/config';
import { writePerTurn, writesBehind } from '../core/concurrency';
import { createProducer, dlqTopicOf } from '../core/kafka';
import type { Logger } from '../core/logger';
import { kafkaMessagesConsumed, kafkaMessagesDeadLettered } from '../core/metrics';
import type { Queues } from '../queues/connection';
import { addJobs, type NewJob } from '../queues/enqueue';
import { writeInbox, type InboxEntry, type InboxSource } from '../storage/inbox';
import type { ApplyInPlace } from './in-place';
import { OffsetCommitter } from './offsets';

export type ToJob = { ok: true; job: NewJob; eventId: string; orderId: string | null } | { ok: false; reason: string };

export interface MessageRoute {
  topic: string;
  /** The inbox's name for the topic's events (processed_events.source for payments). */
  source: InboxSource;
  toJob(message: KafkaMessage, partition: number): ToJob;
}

/** Adds at most this many jobs per Redis round trip, and marks the offset after each chunk. */
const CHUNK = 500;
const MAX_BACKOFF_MS = 5_000;
/** How long the broker holds an empty fetch: the idle bridge's fetch rate (a message ends the wait at once). */
const FETCH_WAIT_MS = 1_000;

export interface BridgeConsumer {
  consumer: Consumer;
  stop(): Promise<void>;
}

export async function startBridgeConsumer(opts: {
  kafka: Kafka;
  /** Where the inbox is written (I11). */
  db: Sequelize;
  queues: Queues;
  log: Logger;
  routes: MessageRoute[];
  /** PAYMENT_APPLY=bridge: payments applied here, not made into jobs (src/bridge/in-place.ts). */
  applyInPlace?: ApplyInPlace;
  /** The consumer stopped for good (kafkajs gave up, e.g. after the broker was away too long). */
  onFatal: (error: Error) => void;
}): Promise<BridgeConsumer> {
  const cfg = config();
  const { kafka, queues, log } = opts;
  const routes = new Map(opts.routes.map((r) => [r.topic, r]));
  // Series from 0, so Prometheus's increase() sees the first message of each.
  for (const topic of routes.keys()) {
    kafkaMessagesConsumed.inc({ topic }, 0);
    kafkaMessagesDeadLettered.inc({ topic }, 0);
  }
  // Dead letters are rare; a retried send may write one twice, which the DLQ's reader can bear.
  const producer = createProducer(kafka);
  await producer.connect();
  const consumer = kafka.consumer({
    groupId: cfg.KAFKA_GROUP_ID,
    sessionTimeout: cfg.KAFKA_SESSION_TIMEOUT_MS,
    heartbeatInterval: Math.max(1_000, Math.floor(cfg.KAFKA_SESSION_TIMEOUT_MS / 10)),
    // A fetch returns as soon as any message is there (minBytes 1), and an idle one waits up to
    // FETCH_WAIT_MS at the broker. A fetch gathering 16 KB or 20 ms instead made 50 empty fetches
    // a second when idle (about 0.07 of a core, bridge and broker together, of the 0.11 measured
    // with `npm run bench:idle`) and held every event up to 20 ms; under load, batches still form on
    // their own, from what arrives while the previous batch is being handed over.
    minBytes: 1,
    maxWaitTimeInMs: FETCH_WAIT_MS,
  });
  const offsets = new OffsetCommitter((list) => consumer.commitOffsets(list), cfg.KAFKA_COMMIT_INTERVAL_MS, log);
  consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
    offsets.keepOnly(payload.memberAssignment);
    log.info(
      { groupId: payload.groupId, memberId: payload.memberId, assignment: payload.memberAssignment },
      'bridge joined the consumer group',
    );
  });
  consumer.on(consumer.events.CRASH, ({ payload }) => {
    log.error({ err: payload.error, restart: payload.restart }, 'kafka consumer crashed');
    // kafkajs restarts the consumer after a retriable error only; otherwise it stays down while
    // the process lives on, consuming nothing. Better to exit and be restarted by the supervisor.
    if (!payload.restart) opts.onFatal(payload.error);
  });
  await consumer.connect();
  for (const topic of routes.keys()) {
    // A new group starts at the beginning: an old payment event is deduplicated, a skipped one is lost.
    await consumer.subscribe({ topic, fromBeginning: true });
  }

  let running = true;
  const handover = handOver(opts.db, queues);
  const inFlight = writesBehind();
  await consumer.run({
    partitionsConsumedConcurrently: cfg.KAFKA_PARTITIONS_CONCURRENCY,
    eachBatchAutoResolve: false,
    // Each batch marks its offsets once its events are handed over (below); OffsetCommitter commits
    // the marks of every partition in one request at most every KAFKA_COMMIT_INTERVAL_MS, where
    // kafkajs's auto-commit sent one request per batch.
    autoCommit: false,
    eachBatch: (payload) => {
      const handled = handleBatch(payload, {
        ...handover,
        applyInPlace: opts.applyInPlace,
        mark: (o) => offsets.mark(o),
        routes,
        producer,
        log,
        isRunning: () => running,
      });
      // Kept for stop() to wait on; kafkajs gets the outcome, errors included.
      inFlight.add(handled.catch(() => undefined));
      return handled;
    },
  });
  return {
    consumer,
    async stop() {
      running = false;
      // No more fetches: a batch fetched now would return unhandled and be fetched again, over and
      // over, until the disconnect.
      consumer.pause([...routes.keys()].map((topic) => ({ topic })));
      // The batches in hand finish their chunk (or give up, once stopped), then their marks are
      // committed while this member still holds its partitions.
      await inFlight.flushed();
      await offsets.close();
      await consumer.disconnect().catch((error: unknown) => log.warn({ err: error }, 'kafka consumer did not disconnect cleanly'));
      await producer.disconnect().catch(() => undefined);
    },
  };
}

/**
 * The inbox write and the job adds of the partitions' batches, each coalesced per turn: one fetch
 * brings a batch per partition (six by default), handled at once, and each would otherwise cost its
 * own Postgres commit and Redis round trip, the bridge's largest costs under load. A batch's events
 * stay in their order within the statement, and each handler still waits for its own events to be
 * written before it marks its offset. A combined write or add that fails is tried again batch by
 * batch, so one partition's trouble holds up no other.
 */
export function handOver(db: Sequelize, queues: Queues) {
  return {
    writeInbox: writePerTurn((batches: InboxEntry[][]) => writeInbox(db, batches.flat()), { isolate: true }),
    addJobs: writePerTurn((batches: NewJob[][]) => addJobs(queues, batches.flat()), { isolate: true }),
  };
}

interface BatchDeps {
  writeInbox(entries: InboxEntry[]): Promise<void>;
  addJobs(jobs: NewJob[]): Promise<void>;
  /** With PAYMENT_APPLY=bridge: applies the payments among a chunk's jobs, once they are in the inbox; answers the jobs still to add. */
  applyInPlace?: ApplyInPlace;
  /** The partition is handed over up to this offset (the next message to read): OffsetCommitter commits it. */
  mark(offset: TopicPartitionOffsetAndMetadata): void;
  routes: Map<string, MessageRoute>;
  producer: Producer;
  log: Logger;
  isRunning: () => boolean;
}

async function handleBatch(payload: EachBatchPayload, deps: BatchDeps): Promise<void> {
  const { batch, resolveOffset, heartbeat, isRunning, isStale } = payload;
  const route = deps.routes.get(batch.topic);
  if (!route) throw new Error(`no route for topic ${batch.topic}`);
  const log = deps.log.child({ topic: batch.topic, partition: batch.partition });
  const live = () => deps.isRunning() && isRunning() && !isStale();

  for (let start = 0; start < batch.messages.length; start += CHUNK) {
    if (!live()) return;
    const chunk = batch.messages.slice(start, start + CHUNK);
    const jobs: NewJob[] = [];
    const inbox: InboxEntry[] = [];
    const dead: { message: KafkaMessage; reason: string }[] = [];
    for (const message of chunk) {
      const mapped = route.toJob(message, batch.partition);
      if (mapped.ok) {
        jobs.push(mapped.job);
        inbox.push({ source: route.source, eventId: mapped.eventId, job: mapped.job, orderId: mapped.orderId });
      } else dead.push({ message, reason: mapped.reason });
    }

    if (jobs.length > 0) {
      // Durable first: once the offset moves, Kafka may forget the events, and Redis may lose the
      // jobs (a restart without its data, a failover to a lagging replica); the inbox keeps them.
      const written = await persist(() => deps.writeInbox(inbox), `write ${inbox.length} events to the inbox`, log, heartbeat, live);
      if (written === 'stopped') return;
      // PAYMENT_APPLY=bridge: a payment that takes effect here needs no job (src/bridge/in-place.ts).
      const toQueue = deps.applyInPlace ? await deps.applyInPlace(jobs) : jobs;
      if (toQueue.length > 0) {
        const done = await persist(() => deps.addJobs(toQueue), `enqueue ${toQueue.length} jobs`, log, heartbeat, live);
        if (done === 'stopped') return;
      }
    }
    for (const d of dead) {
      const done = await persist(
        () =>
          deps.producer.send({
            topic: dlqTopicOf(batch.topic),
            acks: -1,
            messages: [deadLetter(batch.topic, batch.partition, d.message, d.reason)],
          }),
        'dead-letter a message',
        log,
        heartbeat,
        live,
        // The broker refuses this very message for good (e.g. too large with its headers): blocking
        // the partition for it would stop every later event, so it is logged and left in its topic.
        (error) => (error as { retriable?: boolean }).retriable === false,
      );
      if (done === 'stopped') return;
      if (done === 'refused') {
        log.error(
          { offset: d.message.offset, reason: d.reason },
          'message could not be dead-lettered; skipped, it stays in its topic at this offset',
        );
      } else {
        kafkaMessagesDeadLettered.inc({ topic: batch.topic });
        log.warn({ offset: d.message.offset, reason: d.reason }, 'message sent to the dead-letter topic');
      }
    }

    // Everything of this chunk is in the inbox and Redis, or in the DLQ: only now may Kafka forget
    // it. A crash before the commit redelivers the chunk.
    const last = chunk[chunk.length - 1] as KafkaMessage;
    resolveOffset(last.offset);
    deps.mark({ topic: batch.topic, partition: batch.partition, offset: (BigInt(last.offset) + 1n).toString() });
    kafkaMessagesConsumed.inc({ topic: batch.topic }, chunk.length);
    await heartbeat();
    log.debug({ jobs: jobs.length, dead: dead.length, offset: last.offset }, 'batch chunk handed over');
  }
}

/**
 * Runs `fn` until it succeeds, backing off and heartbeating meanwhile: while Postgres, Redis or the DLQ is away
 * the partition waits (nothing can be handed over), and the group keeps this member. Gives up when
 * the consumer stops or loses the partition ('stopped': the batch is redelivered to whoever has it),
 * or when `final` says an error will never go away ('refused').
 */
async function persist(
  fn: () => Promise<unknown>,
  what: string,
  log: Logger,
  heartbeat: () => Promise<void>,
  live: () => boolean,
  final: (error: unknown) => boolean = () => false,
): Promise<'done' | 'stopped' | 'refused'> {
  for (let attempt = 0; ; attempt += 1) {
    try {
      await fn();
      if (attempt > 0) log.info({ attempts: attempt + 1 }, `${what}: done after retries`);
      return 'done';
    } catch (error) {
      if (!live()) return 'stopped';
      if (final(error)) return 'refused';
      const delay = Math.min(MAX_BACKOFF_MS, 200 * 2 ** attempt);
      log.warn({ err: error, attempt: attempt + 1, retryInMs: delay }, `${what} failed; retrying`);
      await new Promise((resolve) => setTimeout(resolve, delay));
      await heartbeat().catch(() => undefined);
      if (!live()) return 'stopped';
    }
  }
}

/** The original message, untouched, with why it was refused and where it came from in headers. */
function deadLetter(topic: string, partition: number, message: KafkaMessage, reason: string) {
  return {
    key: message.key,
    value: message.value,
    headers: {
      ...message.headers,
      'dlq-reason': reason,
      'dlq-source-topic': topic,
      'dlq-source-partition': String(partition),
      'dlq-source-offset': message.offset,
      'dlq-at': new Date().toISOString(),
    },
  };
}
