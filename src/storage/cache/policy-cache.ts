// The policy lookups of the issue path that the admission state in Redis does not answer: which
// policy a shared code names, and which ACTIVE EVENT policies an event type triggers. Kept in each
// process for up to five minutes; every admin change is announced on a Redis channel and empties
// the cache of every process within milliseconds. A process that lost the channel (a reconnect)
// may have missed announcements, so it empties its cache then too.
import type { Redis } from 'ioredis';
import { Op } from 'sequelize';
import { singleFlight } from '../../core/concurrency';
import type { Logger } from '../../core/logger';
import { createRedis } from '../../core/redis';
import { redisKeys } from '../../core/redis-keys';
import { CouponPolicy } from '../policy';

export const POLICY_CACHE_TTL_MS = 5 * 60_000;

interface Snapshot {
  /** Shared code (in capitals) → its policy, for every policy with a shared code. */
  codes: Map<string, string>;
  /** Trigger event type → the ACTIVE EVENT policies it triggers, oldest first. */
  triggers: Map<string, { id: string; createdAt: number }[]>;
  until: number;
}

const channel = () => redisKeys().policyChangedChannel();

/**
 * One snapshot of the few policies these lookups concern (those with a shared code, and the ACTIVE
 * EVENT ones), loaded whole: a lookup of a code that is no shared code (every single-use code)
 * then costs nothing, and no stream of made-up codes can grow the cache.
 */
class PolicyCache {
  private snapshot: Snapshot | null = null;
  /** One load at a time; an invalidation lets the next lookup start another. */
  private loads = singleFlight<'snapshot', Snapshot>();
  /** Bumped by every invalidation: a load that started before one is not kept. */
  private epoch = 0;

  /** The policy whose shared code this is (normalized, in capitals), or null. */
  async sharedCodePolicy(normalized: string): Promise<string | null> {
    return (await this.current()).codes.get(normalized) ?? null;
  }

  /** The ACTIVE EVENT policies whose triggerEvent is `type` and that existed at `at`, oldest first. */
  async eventPolicies(type: string, at: Date = new Date()): Promise<string[]> {
    const policies = (await this.current()).triggers.get(type) ?? [];
    return policies.filter((p) => p.createdAt <= at.getTime()).map((p) => p.id);
  }

  /** Loads the snapshot now, so a sale's first requests find it. */
  async warm(): Promise<{ sharedCodes: number; triggers: number }> {
    const snapshot = await this.current();
    return { sharedCodes: snapshot.codes.size, triggers: snapshot.triggers.size };
  }

  clear(): void {
    this.epoch += 1;
    this.snapshot = null;
    this.loads.forget('snapshot');
  }

  private current(): Promise<Snapshot> {
    if (this.snapshot && this.snapshot.until > Date.now()) return Promise.resolve(this.snapshot);
    return this.loads.run('snapshot', () => {
      const epoch = this.epoch;
      return this.load().then((snapshot) => {
        if (epoch === this.epoch) this.snapshot = snapshot;
        return snapshot;
      });
    });
  }

  private async load(): Promise<Snapshot> {
    const rows = await CouponPolicy.findAll({
      where: { [Op.or]: [{ code: { [Op.ne]: null } }, { issueMethod: 'EVENT', status: 'ACTIVE' }] },
      attributes: ['id', 'code', 'triggerEvent', 'issueMethod', 'status', 'createdAt'],
      order: [
        ['createdAt', 'ASC'],
        ['id', 'ASC'],
      ],
    });
    const codes = new Map<string, string>();
    const triggers = new Map<string, { id: string; createdAt: number }[]>();
    for (const p of rows) {
      // A paused or ended policy keeps its code: redeeming it says POLICY_NOT_ACTIVE, not CODE_NOT_FOUND.
      if (p.code) codes.set(p.code.toUpperCase(), p.id);
      if (p.issueMethod === 'EVENT' && p.status === 'ACTIVE' && p.triggerEvent) {
        triggers.set(p.triggerEvent, [...(triggers.get(p.triggerEvent) ?? []), { id: p.id, createdAt: p.createdAt.getTime() }]);
      }
    }
    return { codes, triggers, until: Date.now() + POLICY_CACHE_TTL_MS };
  }
}

export const policyCache = new PolicyCache();

/** Tells every process that a policy changed (created, paused, resumed, ended, extended, raised). */
export async function announcePolicyChange(redis: Redis, policyId: string): Promise<void> {
  policyCache.clear();
  await redis.publish(channel(), policyId);
}

/**
 * Keeps this process's cache in step with admin changes. `subscriber` becomes a subscriber-only
 * connection. Resolves once subscribed; the returned function unsubscribes.
 */
export async function followPolicyChanges(subscriber: Redis, log: Logger): Promise<() => Promise<void>> {
  let subscribed = false;
  subscriber.on('message', (ch: string, policyId: string) => {
    if (ch !== channel()) return;
    policyCache.clear();
    log.debug({ policyId }, 'policy changed; policy cache emptied');
  });
  // ioredis resubscribes after a reconnect; announcements sent meanwhile are lost, so start afresh.
  subscriber.on('ready', () => {
    if (subscribed) policyCache.clear();
  });
  await subscriber.subscribe(channel());
  subscribed = true;
  return async () => {
    await subscriber.unsubscribe(channel()).catch(() => undefined);
    subscriber.disconnect();
  };
}

/** Follows admin changes on a connection of its own, then warms the cache; the result stops following. */
export async function startPolicyCache(log: Logger): Promise<() => Promise<void>> {
  const stop = await followPolicyChanges(createRedis('worker'), log);
  const warmed = await policyCache.warm();
  log.info(warmed, 'policy cache warmed with the shared codes and ACTIVE EVENT policies');
  return stop;
}
