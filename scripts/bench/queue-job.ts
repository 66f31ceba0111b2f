// Queue-job baseline: what one BullMQ job costs on this machine, with nothing else in it. A producer
// adds JOBS jobs shaped like a reserve's (the checkout queue's options: attempts, retention by age and
// count) at RATE a second, in bursts every 10 ms as a web's turns add them, and a worker (concurrency
// WORKER_CONCURRENCY, its own connection, as in src/worker/consumers.ts) takes and finishes each with a
// processor that does nothing. Reported per job: the Node CPU of producer and worker together (one
// process: the bench's own CPU) and Redis's CPU (every redis-server process's, read from /proc as
// the other benches read it: scripts/bench/cpu.ts). A
// checkout makes two such jobs in worker mode (its reserve and its payment), one with
// PAYMENT_APPLY=bridge: this is the floor those jobs put under a checkout's cost.
//
// Usage:
//   npm run bench:queue-job                    # 3 rounds of 20,000 jobs at 2,000 a second
//   JOBS=50000 RATE=5000 npm run bench:queue-job
//
// Environment (defaults in brackets): JOBS [20000]  RATE [2000]  ROUNDS [3]  REDIS_URL [redis://127.0.0.1:6379]
//
// Output: one line per round and the medians on stdout; JSON in bench/results/queue-job-<timestamp>.json
// and bench/results/queue-job-latest.json. Exit code 0, 1 when a round did not finish every job it
// added, 2 when the bench could not run.
import { randomBytes } from 'node:crypto';
import { cpus, loadavg } from 'node:os';
import { Queue, Worker } from 'bullmq';
import IORedis from 'ioredis';
import { z } from 'zod';
import { urlWith } from '../../src/core/config';
import { JOB_OPTIONS } from '../../src/queues/connection';
import { fmtInt, gitState, int, median, note, round, runBench, sleep, writeResults } from './common';
import { classifier, startCpuPhase } from './cpu';

const configSchema = z.object({
  JOBS: int(20_000),
  RATE: int(2_000),
  ROUNDS: int(3),
  WORKER_CONCURRENCY: int(64),
  REDIS_URL: urlWith(['redis:', 'rediss:']).default('redis://127.0.0.1:6379'),
});

interface Round {
  jobs: number;
  finished: number;
  seconds: number;
  nodeUsPerJob: number;
  redisUsPerJob: number;
}

async function runRound(cfg: z.infer<typeof configSchema>, prefix: string): Promise<Round> {
  const producer = new IORedis(cfg.REDIS_URL, { maxRetriesPerRequest: null, enableAutoPipelining: true });
  const consumer = new IORedis(cfg.REDIS_URL, { maxRetriesPerRequest: null });
  const queue = new Queue('checkout', { connection: producer, prefix, defaultJobOptions: JOB_OPTIONS.checkout });
  let finished = 0;
  let allDone: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (allDone = resolve));
  const worker = new Worker(
    'checkout',
    async () => {
      finished += 1;
      if (finished === cfg.JOBS) allDone();
      return { outcome: 'succeeded', result: { reservationId: randomBytes(16).toString('hex') } };
    },
    { connection: consumer, prefix, concurrency: cfg.WORKER_CONCURRENCY, autorun: false },
  );
  const data = {
    couponId: randomBytes(18).toString('hex'),
    orderId: randomBytes(18).toString('hex'),
    orderAmount: 50_000,
    userId: randomBytes(18).toString('hex'),
    requestId: `rsv_${randomBytes(20).toString('hex')}`,
    traceId: randomBytes(16).toString('hex'),
    requestedAt: new Date().toISOString(),
  };
  const perBurst = Math.max(1, Math.round(cfg.RATE / 100));
  // This process and Redis: no stack of ours runs (`own` names none, so no node process is taken for one).
  const cpu = startCpuPhase(classifier({ web: [], workers: [] }));
  const started = performance.now();
  void worker.run();
  for (let i = 0; i < cfg.JOBS; i += perBurst) {
    const burst = Array.from({ length: Math.min(perBurst, cfg.JOBS - i) }, (_, k) => queue.add('reserve', data, { jobId: `j${i + k}` }));
    await Promise.all([...burst, sleep(10)]);
  }
  await Promise.race([done, sleep(60_000)]);
  const seconds = (performance.now() - started) / 1000;
  const { groupsMs } = cpu();
  await worker.close();
  await queue.obliterate({ force: true });
  await queue.close();
  producer.disconnect();
  consumer.disconnect();
  return {
    jobs: cfg.JOBS,
    finished,
    seconds: round(seconds, 2),
    nodeUsPerJob: round((groupsMs.bench * 1000) / finished, 1),
    redisUsPerJob: round((groupsMs.redis * 1000) / finished, 1),
  };
}

async function main(): Promise<number> {
  const parsed = configSchema.safeParse(Object.fromEntries(Object.entries(process.env).filter(([, v]) => v)));
  if (!parsed.success)
    throw new Error(`bad configuration: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  const cfg = parsed.data;
  const startedAt = new Date();
  process.stdout.write(
    `Queue job: ${fmtInt(cfg.JOBS)} BullMQ jobs at ${fmtInt(cfg.RATE)}/s, a no-op worker of concurrency ${cfg.WORKER_CONCURRENCY}, ${cfg.ROUNDS} round(s); ${cpus().length} CPUs, load average ${loadavg()
      .map((x) => round(x, 2))
      .join(' ')}\n`,
  );
  const rounds: Round[] = [];
  for (let r = 1; r <= cfg.ROUNDS; r += 1) {
    note(`round ${r}: adding ${fmtInt(cfg.JOBS)} jobs`);
    const result = await runRound(cfg, `bench-queue-job-${randomBytes(4).toString('hex')}`);
    rounds.push(result);
    process.stdout.write(
      `${r}  ${fmtInt(result.finished)} of ${fmtInt(result.jobs)} finished in ${result.seconds} s; a job: node ${result.nodeUsPerJob} µs (producer and worker), redis ${result.redisUsPerJob} µs\n`,
    );
  }
  const medians = { nodeUsPerJob: median(rounds.map((r) => r.nodeUsPerJob)), redisUsPerJob: median(rounds.map((r) => r.redisUsPerJob)) };
  process.stdout.write(`med  a job: node ${medians.nodeUsPerJob} µs, redis ${medians.redisUsPerJob} µs\n`);
  const complete = rounds.every((r) => r.finished === r.jobs);
  process.stdout.write(`  ${complete ? 'PASS' : 'FAIL'}  every job added was finished\n`);
  process.stdout.write(
    `${writeResults('queue-job', 'queue-job-latest.json', startedAt, { bench: 'queue-job', startedAt: startedAt.toISOString(), config: cfg, rounds, medians, git: gitState() })}\n`,
  );
  return complete ? 0 : 1;
}

runBench(main);
