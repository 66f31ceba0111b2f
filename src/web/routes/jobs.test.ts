// The wait for a pushed checkout job (pushedView), against a stand-in queue and hub: answered from
// the push without a read; and when the push never comes, from the reads that stand in for it.
import type { Queues } from '../../queues/connection';
import type { FinishedJob } from '../../queues/finished';
import type { Logger } from '../../core/logger';
import type { OutcomeHub } from '../outcome-hub';
import { pushedView } from './jobs';

const log = { warn: () => undefined } as unknown as Logger;
const reserveResult = { reservationId: 'r1', couponId: 'c1', orderId: 'o1', discountAmount: 3000, expiresAt: '2026-12-05T17:00:00.000Z' };
const finished: FinishedJob = {
  id: 'rsv_1',
  name: 'reserve',
  timestamp: 1_000,
  userId: 'u1',
  finishedOn: 2_000,
  returnvalue: { outcome: 'succeeded', result: reserveResult },
};

/** A checkout queue whose job is pending for the first `pendingReads` reads, then finished. */
function queueFinishingAfter(pendingReads: number) {
  let reads = 0;
  const getJob = async () => {
    reads += 1;
    const done = reads > pendingReads;
    return {
      name: 'reserve',
      timestamp: 1_000,
      data: { userId: 'u1' },
      finishedOn: done ? 2_000 : undefined,
      returnvalue: done ? finished.returnvalue : undefined,
    };
  };
  return { queues: { get: () => ({ getJob }) } as unknown as Queues, reads: () => reads };
}

/** A hub that never hears a push: each wait runs its time out. */
const deafHub = { waitJob: (_id: string, ms: number) => new Promise((done) => setTimeout(() => done(null), ms)) } as unknown as OutcomeHub;

describe('waiting for a pushed checkout job', () => {
  it('answers from the push, reading nothing', async () => {
    const queue = queueFinishingAfter(0);
    const view = await pushedView(queue.queues, deafHub, 'rsv_1', Promise.resolve(finished), 5_000, log);
    expect(view).toEqual({
      id: 'rsv_1',
      type: 'reserve',
      status: 'succeeded',
      result: reserveResult,
      createdAt: new Date(1_000).toISOString(),
      finishedAt: new Date(2_000).toISOString(),
      ownerId: 'u1',
    });
    expect(queue.reads()).toBe(0);
  });

  it('reads the job when no push comes, and again until it finished', async () => {
    const queue = queueFinishingAfter(1);
    const view = await pushedView(queue.queues, deafHub, 'rsv_1', Promise.resolve(null), 5_000, log);
    expect(view).toMatchObject({ status: 'succeeded', result: reserveResult });
    // The first read found it pending; the next wait (up to a second) ran out and the read found it finished.
    expect(queue.reads()).toBe(2);
  });

  it('answers pending once the wait is over', async () => {
    const queue = queueFinishingAfter(1_000);
    const view = await pushedView(queue.queues, deafHub, 'rsv_1', Promise.resolve(null), 1_500, log);
    expect(view).toMatchObject({ status: 'pending', type: 'reserve' });
    expect(queue.reads()).toBeGreaterThanOrEqual(2);
  });

  it('answers a job Redis no longer has as none', async () => {
    const queues = { get: () => ({ getJob: async () => undefined }) } as unknown as Queues;
    expect(await pushedView(queues, deafHub, 'rsv_1', Promise.resolve(null), 5_000, log)).toBeUndefined();
  });
});
