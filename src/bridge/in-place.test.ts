// applyPaymentsInPlace on its own, the use case replaced: which jobs it hands back to be queued. The
// whole path, with the bridge process, Kafka, Postgres and Redis, is in test/payments.test.ts.
import type { Sequelize } from 'sequelize';
import { logger } from '../core/logger';
import { paymentsAppliedInPlace } from '../core/metrics';
import type { NewJob } from '../queues/enqueue';
import { applyCheckoutEvent, type CheckoutOutcome } from '../usecases/payment-event';
import { applyPaymentsInPlace } from './in-place';

jest.mock('../usecases/payment-event', () => ({
  ...jest.requireActual<object>('../usecases/payment-event'),
  applyCheckoutEvent: jest.fn(),
}));
const apply = applyCheckoutEvent as jest.MockedFunction<typeof applyCheckoutEvent>;

const payment = (eventId: string, type = 'PAYMENT_COMPLETED'): NewJob => ({
  kind: 'payment',
  id: `pay_${eventId}`,
  data: {
    event: { eventId, type, orderId: `order-${eventId}`, occurredAt: '2026-12-06T10:00:00.000Z' },
    traceId: 'trace',
    source: { topic: 'payments.v1', partition: 0, offset: '1' },
    receivedAt: '2026-12-06T10:00:00.000Z',
  },
});
const duplicate: CheckoutOutcome = { kind: 'duplicate', outcome: 'APPLIED', reasonCode: null };
const counted = async (result: string) => (await paymentsAppliedInPlace.get()).values.find((v) => v.labels.result === result)?.value ?? 0;

describe('applyPaymentsInPlace', () => {
  const applyInPlace = applyPaymentsInPlace({ db: {} as Sequelize, log: logger() });
  beforeEach(() => apply.mockReset());

  it('hands back only what it could not apply: events that must wait, failures and other kinds of job, in order', async () => {
    apply.mockImplementation(async (_deps, event) => {
      if (event.eventId === 'wait') return { kind: 'wait', why: 'the refund is ahead of its payment' };
      if (event.eventId === 'boom') throw new Error('Postgres went away');
      return duplicate;
    });
    const userEvent: NewJob = { kind: 'user-event', id: 'uev_1', data: {} };
    const left = await applyInPlace([payment('a'), payment('wait', 'PAYMENT_REFUNDED'), userEvent, payment('boom'), payment('b')]);
    expect(left.map((j) => j.id)).toEqual(['pay_wait', 'uev_1', 'pay_boom']);
    expect(apply.mock.calls.map(([, e]) => e.eventId)).toEqual(['a', 'wait', 'boom', 'b']);
  });

  it('applies an event that came twice in one chunk once, and its copy shares its fate', async () => {
    apply.mockResolvedValue(duplicate);
    const before = await counted('duplicate');
    expect(await applyInPlace([payment('x'), payment('y'), payment('x')])).toEqual([]);
    expect(apply.mock.calls.map(([, e]) => e.eventId)).toEqual(['x', 'y']);
    // x, y (each answered duplicate by the use case here) and x's copy.
    expect((await counted('duplicate')) - before).toBe(3);

    apply.mockReset().mockResolvedValue({ kind: 'wait', why: 'not yet' });
    expect((await applyInPlace([payment('z'), payment('z')])).map((j) => j.id)).toEqual(['pay_z', 'pay_z']);
    expect(apply).toHaveBeenCalledTimes(1);
  });
});
