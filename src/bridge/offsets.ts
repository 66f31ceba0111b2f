// The bridge's offset commits, sent at most every KAFKA_COMMIT_INTERVAL_MS. A batch marks its
// partition's offset once its events are handed over (in the inbox, their jobs added, or
// dead-lettered), and one request commits the latest mark of every partition. A commit per fetch was
// as many requests at the broker as the fetches themselves, and a round trip on the bridge's loop
// before its next fetch. A crash loses only marks not committed yet: Kafka redelivers those events,
// which the inbox's unique event key, the derived job ids and processed_events absorb, as for any
// crash before a commit.
import type { TopicPartitionOffsetAndMetadata } from 'kafkajs';
import { failpoint } from '../core/failpoints';
import type { Logger } from '../core/logger';

const keyOf = (o: { topic: string; partition: number }) => `${o.topic}/${o.partition}`;
/** How often a stopping bridge tries its last commit, and how long it waits between tries. */
const CLOSE_ATTEMPTS = 3;
const CLOSE_RETRY_MS = 200;

export class OffsetCommitter {
  private readonly marks = new Map<string, TopicPartitionOffsetAndMetadata>();
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;
  private closed = false;
  /** This member's partitions as of its last join; null before the first. */
  private assignment: Record<string, number[]> | null = null;

  constructor(
    private readonly commit: (offsets: TopicPartitionOffsetAndMetadata[]) => Promise<void>,
    private readonly intervalMs: number,
    private readonly log: Logger,
  ) {}

  /** Everything of the partition before `offset` (the next message to read) is handed over. */
  mark(offset: TopicPartitionOffsetAndMetadata): void {
    this.marks.set(keyOf(offset), offset);
    this.schedule();
  }

  /** Scheduled by a mark, not on a fixed beat: an idle bridge wakes for nothing. */
  private schedule(): void {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.flush();
    }, this.intervalMs);
    this.timer.unref();
  }

  /**
   * The group gave this member new partitions: marks of the ones it lost are dropped, since their
   * new owner commits them now (kafkajs starts every partition again from its committed offset).
   */
  keepOnly(assignment: Record<string, number[]>): void {
    this.assignment = assignment;
    for (const [key, mark] of this.marks) if (!this.holds(mark)) this.marks.delete(key);
  }

  private holds(mark: TopicPartitionOffsetAndMetadata): boolean {
    return this.assignment === null || (this.assignment[mark.topic] ?? []).includes(mark.partition);
  }

  /**
   * Commits every mark not committed yet; resolves either way. One commit at a time: asked while
   * one runs, it waits for it and then commits what was marked meanwhile. A mark whose commit
   * failed stays for the next one, unless a later mark of its partition replaced it or the group
   * has given its partition to another member meanwhile. Answers whether everything was committed.
   */
  async flush(): Promise<boolean> {
    while (this.flushing) await this.flushing;
    if (this.marks.size === 0) return true;
    const offsets = [...this.marks.values()];
    this.marks.clear();
    let committed = false;
    this.flushing = (async () => {
      try {
        await failpoint('bridge.before-commit');
        await this.commit(offsets);
        committed = true;
      } catch (error) {
        for (const o of offsets) if (!this.marks.has(keyOf(o)) && this.holds(o)) this.marks.set(keyOf(o), o);
        this.log.warn(
          { err: error, partitions: offsets.length },
          this.closed ? 'offset commit failed while stopping' : 'offset commit failed; tried again with the next one',
        );
        this.schedule();
      }
    })().finally(() => (this.flushing = null));
    await this.flushing;
    return committed;
  }

  /**
   * For a stopping bridge, once its batches are done: commits what is marked (trying up to three
   * times), and schedules nothing more. What it could not commit, Kafka delivers again to the next
   * member, deduplicated like any redelivery.
   */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (let attempt = 1; attempt <= CLOSE_ATTEMPTS; attempt += 1) {
      if (await this.flush()) return;
      if (attempt < CLOSE_ATTEMPTS) await new Promise((resolve) => setTimeout(resolve, CLOSE_RETRY_MS));
    }
    this.log.warn({ partitions: this.marks.size }, 'offsets not committed at stop: their events will be delivered again');
  }
}
