// Alert events: a log line at warn or error with an `alert` field (what log-based alerting matches)
// and coupon_alerts_total{alert} (what docs/prometheus/alerts.yml matches).
import type { Logger } from './logger';
import { alertsTotal } from './metrics';

export const ALERTS = ['POLICY_SOLD_OUT', 'POLICY_90_PERCENT', 'JOB_FAILURES', 'CONSUMER_LAG', 'PAYMENT_CONFLICT'] as const;
export type AlertName = (typeof ALERTS)[number];

export function raiseAlert(
  log: Logger,
  alert: AlertName,
  fields: Record<string, unknown> = {},
  level: 'warn' | 'error' = 'warn',
  msg: string = `alert ${alert}`,
): void {
  alertsTotal.inc({ alert });
  log[level]({ ...fields, alert }, msg);
}

/**
 * Starts the alert series at 0, so Prometheus's increase() sees the first event (a series that is
 * born at 1 has no increase).
 */
export function initAlertSeries(alerts: readonly AlertName[] = ALERTS): void {
  for (const alert of alerts) alertsTotal.inc({ alert }, 0);
}

/** Remembers which one-off alerts this process raised; bounded, oldest forgotten first. */
export class OnceSet {
  private readonly seen = new Set<string>();

  constructor(private readonly max = 10_000) {}

  /** True the first time `key` is seen. */
  first(key: string): boolean {
    if (this.seen.has(key)) return false;
    this.seen.add(key);
    if (this.seen.size > this.max) this.seen.delete(this.seen.values().next().value as string);
    return true;
  }
}

/**
 * Counts events in a sliding window and raises `alert` when more than `threshold` happened within
 * `windowMs`; at most once per window, so a storm of failures is one alert a window, not thousands.
 */
export function slidingWindowAlert(opts: {
  log: Logger;
  alert: AlertName;
  threshold: number;
  windowMs: number;
  level?: 'warn' | 'error';
  msg: string;
  now?: () => number;
}) {
  const now = opts.now ?? Date.now;
  const times: number[] = [];
  let lastRaised = Number.NEGATIVE_INFINITY;
  return (count = 1, fields: Record<string, unknown> = {}): void => {
    const t = now();
    for (let i = 0; i < count; i += 1) times.push(t);
    while (times.length > 0 && (times[0] as number) <= t - opts.windowMs) times.shift();
    // Only the last threshold + 1 matter: the window never grows past that.
    if (times.length > opts.threshold + 1) times.splice(0, times.length - opts.threshold - 1);
    if (times.length > opts.threshold && t - lastRaised >= opts.windowMs) {
      lastRaised = t;
      raiseAlert(
        opts.log,
        opts.alert,
        { ...fields, count: times.length, threshold: opts.threshold, windowMs: opts.windowMs },
        opts.level ?? 'error',
        opts.msg,
      );
    }
  };
}
