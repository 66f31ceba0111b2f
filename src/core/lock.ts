// Redis locks (redlock) for work that one process at a time should do: rebuilding a policy's
// admission state, sweeping stale admissions. A lock only cuts contention; every write it
// guards is also fenced in Postgres, because a paused holder can outlive its lock.
import Redlock, { ExecutionError, type Lock } from 'redlock';
import type { Redis } from 'ioredis';

export type Locks = Redlock;

export function createLocks(redis: Redis): Locks {
  const redlock = new Redlock([redis], {
    driftFactor: 0.01,
    retryCount: 20,
    retryDelay: 100,
    retryJitter: 50,
    automaticExtensionThreshold: 500,
  });
  // Failed extensions and releases are reported through the calls that make them.
  redlock.on('error', () => {});
  return redlock;
}

/**
 * Runs fn while holding `resource`; returns undefined without running it when the lock is held
 * elsewhere and `wait` is false. Uses acquire/release rather than redlock's `using`, which has
 * been seen never to settle (redlock#169).
 */
export async function withLock<T>(
  locks: Locks,
  resource: string,
  ttlMs: number,
  fn: () => Promise<T>,
  opts: { wait: boolean } = { wait: true },
): Promise<T | undefined> {
  let lock: Lock;
  try {
    lock = await locks.acquire([resource], ttlMs, opts.wait ? undefined : { retryCount: 0 });
  } catch (error) {
    if (!opts.wait && error instanceof ExecutionError) return undefined;
    throw error;
  }
  try {
    return await fn();
  } finally {
    // An expired lock cannot be released; that is harmless, the TTL already freed it.
    await lock.release().catch(() => undefined);
  }
}
