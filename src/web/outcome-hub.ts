// One subscription per web process to what the workers publish, and the requests of this process
// waiting for it: the outcomes of issue requests (src/queues/outcomes.ts) and the checkout queue's
// finished jobs (src/queues/finished.ts). A message resolves each of its waiting requests with one
// map lookup, instead of every waiting request reading its job (or, for an issue request, the whole
// batch job) or following the queue's event stream.
import type { Redis } from 'ioredis';
import type { Logger } from '../core/logger';
import { createRedis } from '../core/redis';
import { redisKeys } from '../core/redis-keys';
import { finishedMessageSchema, type FinishedJob } from '../queues/finished';
import { outcomeMessageSchema, parseStoredOutcome, type StoredOutcome } from '../queues/outcomes';
import { requestIdOf } from '../queues/names';

export interface OutcomeHub {
  /**
   * Resolves with the request's final outcome when a worker publishes it within `ms`, else null.
   * Register before the outcome can be published (before the job is added, or before reading the
   * stored outcome), so that no message falls between the read and the wait.
   */
  wait(requestId: string, ms: number): Promise<StoredOutcome | null>;
  /** Ends the waits for a request at once (with null): its turn could not be queued. */
  cancel(requestId: string): void;
  /**
   * Resolves with a checkout-queue job once a worker publishes it finished, within `ms`, else null.
   * Register before the job can finish (before it is added, or before reading it), as for wait.
   */
  waitJob(jobId: string, ms: number): Promise<FinishedJob | null>;
  /** Resolves once the subscription is in place (a wait before that may only learn from its final read). */
  ready: Promise<void>;
  close(): Promise<void>;
}

/** Waiters by key: each wait ends with the value published for its key, or null when its time runs out. */
function waiterMap<T>() {
  const waiters = new Map<string, ((value: T | null) => void)[]>();
  return {
    has: (key: string) => waiters.has(key),
    get size() {
      return waiters.size;
    },
    resolve(key: string, value: T | null) {
      const list = waiters.get(key);
      if (!list) return;
      waiters.delete(key);
      for (const w of list) w(value);
    },
    wait(key: string, ms: number): Promise<T | null> {
      return new Promise((done) => {
        // Called only later (a message or a cancel), once `timer` below is set.
        const waiter = (value: T | null) => {
          clearTimeout(timer);
          done(value);
        };
        const list = waiters.get(key);
        if (list) list.push(waiter);
        else waiters.set(key, [waiter]);
        const timer = setTimeout(() => {
          const left = (waiters.get(key) ?? []).filter((w) => w !== waiter);
          if (left.length > 0) waiters.set(key, left);
          else waiters.delete(key);
          done(null);
        }, ms);
      });
    },
    endAll() {
      for (const key of [...waiters.keys()]) this.resolve(key, null);
    },
  };
}

/** A message's JSON read through its schema; null, with a warning, when it does not read. */
function readMessage<S extends typeof outcomeMessageSchema | typeof finishedMessageSchema>(
  schema: S,
  channel: string,
  raw: string,
  log: Logger,
) {
  try {
    const parsed = schema.safeParse(JSON.parse(raw));
    if (parsed.success) return parsed.data as ReturnType<S['parse']>;
    log.warn({ channel, issue: parsed.error.issues[0]?.message }, 'malformed outcome message');
  } catch (error) {
    log.warn({ channel, err: error }, 'unreadable outcome message');
  }
  return null;
}

export function createOutcomeHub(log: Logger, redisUrl?: string): OutcomeHub {
  // A subscribed connection can do nothing else; it retries forever and resubscribes on reconnect.
  const subscriber: Redis = createRedis('worker', redisUrl);
  const requests = waiterMap<StoredOutcome>();
  const jobs = waiterMap<FinishedJob>();
  const outcomesChannel = redisKeys().outcomesChannel();
  const finishedChannel = redisKeys().checkoutFinishedChannel();

  const onOutcomes = (raw: string) => {
    if (requests.size === 0) return;
    const message = readMessage(outcomeMessageSchema, outcomesChannel, raw, log);
    if (!message) return;
    // Only the outcomes of requests waiting here are read: every web process hears every batch.
    for (const [index, value] of message.outcomes) {
      const requestId = requestIdOf(message.job, index);
      if (!requests.has(requestId)) continue;
      // One that does not read wakes its waiters with nothing, as a wait that ran out: they read the record.
      requests.resolve(requestId, parseStoredOutcome(value, requestId, log));
    }
  };
  const onFinished = (raw: string) => {
    if (jobs.size === 0) return;
    const message = readMessage(finishedMessageSchema, finishedChannel, raw, log);
    for (const job of message?.jobs ?? []) jobs.resolve(job.id, job);
  };
  subscriber.on('message', (channel: string, raw: string) => (channel === finishedChannel ? onFinished(raw) : onOutcomes(raw)));
  const ready = subscriber.subscribe(outcomesChannel, finishedChannel).then(() => undefined);
  // A subscription that fails now is retried by ioredis on reconnect; waits fall back to a read.
  ready.catch((error: unknown) => log.warn({ err: error }, 'outcome subscription failed'));

  return {
    wait: (requestId, ms) => requests.wait(requestId, ms),
    cancel: (requestId) => requests.resolve(requestId, null),
    waitJob: (jobId, ms) => jobs.wait(jobId, ms),
    ready,
    async close() {
      requests.endAll();
      jobs.endAll();
      subscriber.disconnect();
    },
  };
}

/** A hub made on its first wait: an app that never waits on a pushed outcome opens no subscription. */
export function lazyOutcomeHub(create: () => OutcomeHub): OutcomeHub {
  let hub: OutcomeHub | undefined;
  const get = () => (hub ??= create());
  return {
    wait: (requestId, ms) => get().wait(requestId, ms),
    cancel: (requestId) => hub?.cancel(requestId),
    waitJob: (jobId, ms) => get().waitJob(jobId, ms),
    get ready() {
      return hub?.ready ?? Promise.resolve();
    },
    close: async () => hub?.close(),
  };
}
