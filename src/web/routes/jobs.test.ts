// The wait for a pushed checkout job (pushedView), against a stand-in queue and hub: answered from
// the push without a read; and when the push never comes, from the reads that stand in for it. And
// what an issue request read as pending is told once its batch has ended (undecidedOutcome).
import type { Queues } from '../../queues/connection';
import type { FinishedJob } from '../../queues/finished';
import type { Logger } from '../../core/logger';
import type { OutcomeHub } from '../outcome-hub';
import type { StoredOutcome } from '../../queues/outcomes';
import { pushedView, undecidedOutcome } from './jobs';

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

describe('an issue request read as pending whose batch has since ended', () => {
  const requestId = 'iss_0b6f1a9e-1111-4c1d-9a55-000000000001.3';
  const pending: StoredOutcome = { s: 'pending', u: 'u1', c: 1_000 };
  const soldOut: StoredOutcome = { s: 'rejected', u: 'u1', c: 1_000, f: 2_000, e: { code: 'SOLD_OUT', message: 'Sold out.' } };
  /** A Redis whose record of the request is now `record` (null: none). */
  const recordNow = (record: StoredOutcome | null) => {
    const asked: string[] = [];
    const connection = {
      hget: async (key: string, field: string) => {
        asked.push(`${key} ${field}`);
        return record === null ? null : JSON.stringify(record);
      },
    };
    return { queues: { connection } as unknown as Queues, asked };
  };

  it('is told what its batch stored between the two reads, not "failed"', async () => {
    // The worker stores a batch's outcomes before BullMQ marks it finished: a read after seeing the
    // batch finished holds them.
    const redis = recordNow(soldOut);
    expect(await undecidedOutcome(redis.queues, requestId, pending, 'finished', log)).toEqual(soldOut);
    expect(redis.asked).toEqual([expect.stringMatching(/:out:iss_0b6f1a9e-1111-4c1d-9a55-000000000001 3$/)]);
  });

  it('ends failed when its record is still pending, or gone', async () => {
    for (const record of [pending, null]) {
      expect(await undecidedOutcome(recordNow(record).queues, requestId, pending, 'finished', log)).toEqual({
        ...pending,
        s: 'failed',
        e: { code: 'INTERNAL', message: 'The request failed after retries.' },
      });
    }
    expect(await undecidedOutcome(recordNow(pending).queues, requestId, pending, 'gone', log)).toMatchObject({
      s: 'failed',
      e: { message: 'The request was lost before a worker took it; ask again.' },
    });
  });
});
