import type { Sequelize } from 'sequelize';
import type { Queues } from '../queues/connection';
import { addJobs } from '../queues/enqueue';
import { writeInbox, type InboxEntry } from '../storage/inbox';
import { handOver } from './consumer';

jest.mock('../storage/inbox', () => ({ writeInbox: jest.fn() }));
jest.mock('../queues/enqueue', () => ({ addJobs: jest.fn() }));

const write = writeInbox as jest.MockedFunction<typeof writeInbox>;
const add = addJobs as jest.MockedFunction<typeof addJobs>;
const db = {} as Sequelize;
const queues = {} as Queues;

const entry = (eventId: string): InboxEntry => ({
  source: 'payments',
  eventId,
  orderId: `order-${eventId}`,
  job: { kind: 'payment', id: `payment-${eventId}`, data: { eventId } },
});
const job = (id: string) => ({ kind: 'payment' as const, id, data: {} });

describe('handOver: the batches of one fetch', () => {
  beforeEach(() => {
    write.mockReset().mockResolvedValue(undefined);
    add.mockReset().mockResolvedValue(undefined);
  });

  it('writes the partitions handed over in one turn as one inbox statement, each batch in its order', async () => {
    const h = handOver(db, queues);
    await Promise.all([h.writeInbox([entry('a1'), entry('a2')]), h.writeInbox([entry('b1')]), h.writeInbox([entry('c1'), entry('c2')])]);
    expect(write).toHaveBeenCalledTimes(1);
    expect(write.mock.calls[0]![1].map((e) => e.eventId)).toEqual(['a1', 'a2', 'b1', 'c1', 'c2']);
  });

  it('adds the jobs of one turn in one call, and those of a later turn in another', async () => {
    const h = handOver(db, queues);
    await Promise.all([h.addJobs([job('j1')]), h.addJobs([job('j2'), job('j3')])]);
    await h.addJobs([job('j4')]);
    expect(add.mock.calls.map((call) => call[1].map((j) => j.id))).toEqual([['j1', 'j2', 'j3'], ['j4']]);
  });

  it('when the combined write fails, tries each batch alone: only the batch that fails alone is refused', async () => {
    write.mockImplementation(async (_db, entries) => {
      if (entries.some((e) => e.eventId === 'bad')) throw new Error('value too long');
    });
    const h = handOver(db, queues);
    const [good, bad] = await Promise.allSettled([h.writeInbox([entry('ok1')]), h.writeInbox([entry('bad')])]);
    expect(good).toEqual({ status: 'fulfilled', value: undefined });
    expect(bad).toMatchObject({ status: 'rejected', reason: new Error('value too long') });
    expect(write.mock.calls.map((call) => call[1].map((e) => e.eventId))).toEqual([['ok1', 'bad'], ['ok1'], ['bad']]);
  });
});
