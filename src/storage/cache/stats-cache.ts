// Statistics answers cached in Redis, shared by every web process. An answer is fresh for
// STATS_CACHE_MS, or for ten times what computing it took when that is longer: dashboards polling
// every second then cost Postgres one computation per period, whatever the number of viewers and
// web processes, and a slow computation (a big table) never keeps Postgres busy more than a tenth
// of the time. One process recomputes a stale answer (it holds a lease, src/core/lease.ts) while the
// others go on serving the previous one, which is then older by at most one computation; every
// answer carries its asOf.
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { singleFlight } from '../../core/concurrency';
import { acquireLease, releaseLease } from '../../core/lease';
import { redisKeys } from '../../core/redis-keys';

/** How many times its computation time an answer stays fresh, at least. */
const FRESH_FACTOR = 10;
/** How long a stale answer is kept to serve while another process recomputes it. */
const STALE_KEEP_MS = 60_000;
/** Longest a recomputation holds the lock (the statement timeout is 15 s). */
const LOCK_MS = 20_000;

interface Entry<T> {
  value: T;
  freshUntil: number;
}

export interface StatsCache {
  /** The cached answer under `key` (src/core/redis-keys.ts statsAnswers), or `compute()`'s (stored for the others). */
  read<T>(key: string, compute: () => Promise<T>): Promise<T>;
}

export function createStatsCache(redis: Redis, opts: { prefix: string; freshMs: number }): StatsCache {
  const keys = redisKeys(opts.prefix);
  const reads = singleFlight<string>();

  const load = async <T>(key: string, compute: () => Promise<T>): Promise<T> => {
    const cacheKey = keys.statsAnswer(key);
    const raw = await redis.get(cacheKey).catch(() => null);
    let entry: Entry<T> | null;
    try {
      entry = raw ? (JSON.parse(raw) as Entry<T>) : null;
    } catch {
      entry = null;
    }
    if (entry && Date.now() < entry.freshUntil) return entry.value;

    const lockKey = keys.statsAnswerLock(key);
    const token = randomUUID();
    const locked = await acquireLease(redis, lockKey, token, LOCK_MS).catch(() => true);
    if (!locked && entry) return entry.value;
    try {
      const started = Date.now();
      const value = await compute();
      const freshFor = Math.max(opts.freshMs, (Date.now() - started) * FRESH_FACTOR);
      const stored: Entry<T> = { value, freshUntil: Date.now() + freshFor };
      await redis.set(cacheKey, JSON.stringify(stored), 'PX', freshFor + STALE_KEEP_MS).catch(() => undefined);
      return value;
    } finally {
      if (locked) await releaseLease(redis, lockKey, token).catch(() => false);
    }
  };

  return {
    read<T>(key: string, compute: () => Promise<T>): Promise<T> {
      // Redis trouble costs only the cache (no waiting for a reconnect): the answer is computed.
      if (opts.freshMs <= 0 || redis.status !== 'ready') return compute();
      // Requests of one process for the same answer share one read.
      return reads.run(key, () => load(key, compute));
    },
  };
}
