import { Writable } from 'node:stream';
import pino from 'pino';
import { ninetyPercentMark } from './stock-alerts';
import { OnceSet, raiseAlert, slidingWindowAlert } from '../core/alerts';
import { alertsTotal } from '../core/metrics';

function capture() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  return { log: pino({ level: 'info', formatters: { level: (label) => ({ level: label }) } }, stream), lines };
}

const count = async (alert: string) => (await alertsTotal.get()).values.find((v) => v.labels.alert === alert)?.value ?? 0;

describe('alerts', () => {
  it('logs the alert name at the given level and counts it', async () => {
    const { log, lines } = capture();
    const before = await count('PAYMENT_CONFLICT');
    raiseAlert(log, 'PAYMENT_CONFLICT', { couponId: 'c1', alert: 'overridden' }, 'error', 'payment conflict: x');
    expect(lines).toEqual([
      expect.objectContaining({ level: 'error', alert: 'PAYMENT_CONFLICT', couponId: 'c1', msg: 'payment conflict: x' }),
    ]);
    expect(await count('PAYMENT_CONFLICT')).toBe(before + 1);
  });

  it('raises JOB_FAILURES once more than the threshold fail within the window, then at most once a window', () => {
    const { log, lines } = capture();
    let now = 0;
    const note = slidingWindowAlert({ log, alert: 'JOB_FAILURES', threshold: 3, windowMs: 1_000, msg: 'jobs failing', now: () => now });
    for (let i = 0; i < 3; i += 1) note();
    expect(lines).toHaveLength(0);
    now = 10;
    note();
    expect(lines).toEqual([expect.objectContaining({ alert: 'JOB_FAILURES', level: 'error', count: 4, threshold: 3 })]);
    now = 500;
    note(50);
    expect(lines).toHaveLength(1);
    now = 1_200; // the window moved on; the 50 at 500 ms still count
    note();
    expect(lines).toHaveLength(2);
    now = 5_000; // old failures no longer count
    note();
    note();
    expect(lines).toHaveLength(2);
  });

  it('remembers a bounded number of one-off alerts', () => {
    const once = new OnceSet(2);
    expect([once.first('a'), once.first('a'), once.first('b'), once.first('c'), once.first('a')]).toEqual([true, false, true, true, true]);
  });

  it('puts the 90 % mark below the last unit, or nowhere for tiny quantities', () => {
    expect([ninetyPercentMark(10), ninetyPercentMark(2000), ninetyPercentMark(15), ninetyPercentMark(5), ninetyPercentMark(1)]).toEqual([
      9,
      1800,
      14,
      null,
      null,
    ]);
  });
});
