import pino from 'pino';
import type { TopicPartitionOffsetAndMetadata } from 'kafkajs';
import { OffsetCommitter } from './offsets';

const INTERVAL_MS = 20;
const silent = pino({ level: 'silent' });
const at = (partition: number, offset: number, topic = 'payments'): TopicPartitionOffsetAndMetadata => ({
  topic,
  partition,
  offset: String(offset),
});
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function committer(commit: (offsets: TopicPartitionOffsetAndMetadata[]) => Promise<void> = async () => undefined) {
  const calls: TopicPartitionOffsetAndMetadata[][] = [];
  const offsets = new OffsetCommitter(
    async (list) => {
      calls.push(list);
      await commit(list);
    },
    INTERVAL_MS,
    silent,
  );
  return { offsets, calls };
}

describe('OffsetCommitter', () => {
  it("commits the marks of one interval in one request, each partition's latest", async () => {
    const { offsets, calls } = committer();
    offsets.mark(at(1, 10));
    offsets.mark(at(4, 7));
    offsets.mark(at(1, 12));
    expect(calls).toEqual([]);
    await sleep(INTERVAL_MS * 3);
    expect(calls).toEqual([[at(1, 12), at(4, 7)]]);

    offsets.mark(at(4, 9));
    await sleep(INTERVAL_MS * 3);
    expect(calls).toEqual([[at(1, 12), at(4, 7)], [at(4, 9)]]);
  });

  it('sends nothing while nothing is marked', async () => {
    const { offsets, calls } = committer();
    await sleep(INTERVAL_MS * 3);
    await offsets.flush();
    expect(calls).toEqual([]);
  });

  it('tries a failed commit again with the next one, unless a later mark of its partition replaced it', async () => {
    let fail = true;
    const { offsets, calls } = committer(async () => {
      if (fail) {
        fail = false;
        throw new Error('The group is rebalancing');
      }
    });
    offsets.mark(at(1, 10));
    offsets.mark(at(2, 5));
    const first = offsets.flush();
    offsets.mark(at(2, 8));
    await first;
    await sleep(INTERVAL_MS * 3);
    expect(calls).toEqual([
      [at(1, 10), at(2, 5)],
      [at(2, 8), at(1, 10)],
    ]);
  });

  it('drops the marks of partitions the group gave to another member', async () => {
    const { offsets, calls } = committer();
    offsets.mark(at(1, 10));
    offsets.mark(at(2, 5));
    offsets.mark(at(0, 3, 'user-events'));
    offsets.keepOnly({ payments: [2, 3], 'user-events': [] });
    await offsets.flush();
    expect(calls).toEqual([[at(2, 5)]]);
  });

  it('does not bring back the mark of a partition lost while its failed commit was out', async () => {
    let release!: () => void;
    // The first commit fails once the group has rebalanced; the next one goes through.
    const { offsets, calls } = committer(
      () =>
        new Promise<void>((resolve, reject) => {
          if (calls.length > 1) resolve();
          else release = () => reject(new Error('The group is rebalancing'));
        }),
    );
    offsets.keepOnly({ payments: [1, 2] });
    offsets.mark(at(1, 10));
    offsets.mark(at(2, 5));
    const first = offsets.flush();
    await sleep(5);
    offsets.keepOnly({ payments: [2] });
    release();
    await first;
    await offsets.flush();
    expect(calls).toEqual([[at(1, 10), at(2, 5)], [at(2, 5)]]);
  });

  it('tries its last commit three times when closed, then gives up', async () => {
    const { offsets, calls } = committer(async () => {
      throw new Error('broker away');
    });
    offsets.mark(at(3, 42));
    await offsets.close();
    expect(calls).toEqual([[at(3, 42)], [at(3, 42)], [at(3, 42)]]);
  });

  it('commits what is marked at once when closed, and nothing is scheduled after', async () => {
    const { offsets, calls } = committer();
    offsets.mark(at(3, 42));
    await offsets.close();
    expect(calls).toEqual([[at(3, 42)]]);
    offsets.mark(at(3, 43));
    await sleep(INTERVAL_MS * 3);
    expect(calls).toHaveLength(1);
  });
});
