// The 'capped' backoff of the payments queue: doubling from the job's delay, never above a minute,
// so a long outage is retried at a steady pace instead of hours apart.
import type { MinimalJob } from 'bullmq';

const MAX_BACKOFF_MS = 60_000;

export function cappedBackoff(attemptsMade: number, _type?: string, _error?: Error, job?: MinimalJob): number {
  const base = (job?.opts.backoff as { delay?: number } | undefined)?.delay ?? 250;
  return Math.min(MAX_BACKOFF_MS, base * 2 ** Math.max(0, attemptsMade - 1));
}
