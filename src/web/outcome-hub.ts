// One subscription per web process to the outcomes the workers publish (src/queues/outcomes.ts), and
// the requests of this process waiting for them: a finished batch resolves each of its waiting
// requests with one map lookup, instead of every waiting request reading the whole batch job.
import type { Redis } from 'ioredis';
import type { Logger } from '../core/logger';
import { createRedis } from '../core/redis';
import { redisKeys } from '../core/redis-keys';
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
  /** Resolves once the subscription is in place (a wait before that may only learn from its final read). */
  ready: Promise<void>;
  close(): Promise<void>;
}

type Waiter = (outcome: StoredOutcome | null) => void;

export function createOutcomeHub(log: Logger, redisUrl?: string): OutcomeHub {
  // A subscribed connection can do nothing else; it retries forever and resubscribes on reconnect.
  const subscriber: Redis = createRedis('worker', redisUrl);
  const waiters = new Map<string, Waiter[]>();

  const resolve = (requestId: string, outcome: StoredOutcome | null) => {
    const list = waiters.get(requestId);
    if (!list) return;
    waiters.delete(requestId);
    for (const w of list) w(outcome);
  };

  subscriber.on('message', (_channel: string, raw: string) => {
    if (waiters.size === 0) return;
    let parsed: ReturnType<typeof outcomeMessageSchema.safeParse>;
    try {
      parsed = outcomeMessageSchema.safeParse(JSON.parse(raw));
    } catch (error) {
      log.warn({ err: error }, 'unreadable outcome message');
      return;
    }
    if (!parsed.success) {
      log.warn({ issue: parsed.error.issues[0]?.message }, 'malformed outcome message');
      return;
    }
    const { job, outcomes } = parsed.data;
    // Only the outcomes of requests waiting here are read: every web process hears every batch.
    for (const [index, value] of outcomes) {
      const requestId = requestIdOf(job, index);
      if (!waiters.has(requestId)) continue;
      // One that does not read wakes its waiters with nothing, as a wait that ran out: they read the record.
      resolve(requestId, parseStoredOutcome(value, requestId, log));
    }
  });
  const ready = subscriber.subscribe(redisKeys().outcomesChannel()).then(() => undefined);
  // A subscription that fails now is retried by ioredis on reconnect; waits fall back to a read.
  ready.catch((error: unknown) => log.warn({ err: error }, 'outcome subscription failed'));

  return {
    wait(requestId, ms) {
      return new Promise((done) => {
        // Called only later (an outcome or a cancel), once `timer` below is set.
        const waiter: Waiter = (outcome) => {
          clearTimeout(timer);
          done(outcome);
        };
        const list = waiters.get(requestId);
        if (list) list.push(waiter);
        else waiters.set(requestId, [waiter]);
        const timer = setTimeout(() => {
          const left = (waiters.get(requestId) ?? []).filter((w) => w !== waiter);
          if (left.length > 0) waiters.set(requestId, left);
          else waiters.delete(requestId);
          done(null);
        }, ms);
      });
    },
    cancel: (requestId) => resolve(requestId, null),
    ready,
    async close() {
      for (const requestId of [...waiters.keys()]) resolve(requestId, null);
      subscriber.disconnect();
    },
  };
}

/** A hub made on its first wait: an app that never waits on an issue outcome opens no subscription. */
export function lazyOutcomeHub(create: () => OutcomeHub): OutcomeHub {
  let hub: OutcomeHub | undefined;
  const get = () => (hub ??= create());
  return {
    wait: (requestId, ms) => get().wait(requestId, ms),
    cancel: (requestId) => hub?.cancel(requestId),
    get ready() {
      return hub?.ready ?? Promise.resolve();
    },
    close: async () => hub?.close(),
  };
}
