// Idle-cost benchmark: what the stack costs with nothing to do. Measures the Kafka broker alone
// first (BEFORE_S, before the stack starts: what it burns for whoever else uses it), then starts a
// stack of its own (1 web, WORKERS workers, 1 bridge: the Procfile, compiled JS), lets it settle
// (SETTLE_S) and measures every process over IDLE_S with no request and no event. The broker's share
// the stack adds is its CPU during the idle phase minus its CPU before. Only the broker at
// KAFKA_BROKERS counts as kafka; on a free loopback port one of its own is started (scripts/infra/kafka.ts),
// so `KAFKA_BROKERS=127.0.0.1:19092` measures a broker nobody else uses, and its own idle cost.
//
// Usage:
//   npm run bench:idle                         # 10 s of broker alone, 30 s of idle stack
//   IDLE_S=60 ROUNDS=3 npm run bench:idle      # three idle phases of 60 s, each reported, medians
//
// Environment (defaults in brackets): IDLE_S [30]  BEFORE_S [10]  SETTLE_S [10]  ROUNDS [1]  WORKERS [1]
//   PROFILE [false] (CPU profiles of web, workers and bridge in .data/profiles)  BUILD [true]  DATABASE_URL [a scratch one]  REDIS_URL [redis://127.0.0.1:6379]  KAFKA_BROKERS [127.0.0.1:9092]
//
// Output: per phase, each process group's CPU in % of one core on stdout; JSON in
// bench/results/idle-<timestamp>.json and bench/results/idle-latest.json. Exit code 0, or 2 when the
// bench could not run (an idle stack has no invariant to break).
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { cpus, loadavg } from 'node:os';
import { Kafka, logLevel } from 'kafkajs';
import { z } from 'zod';
import { urlWith } from '../../src/core/config';
import { consoleLogger } from '../infra/process';
import { ensureServices } from '../infra/services';
import { gitState, int, median, note, runBench, sleep, writeResults } from './common';
import { classifier, startCpuPhase, type Classifier, type CpuReport } from './cpu';
import { benchDatabase, buildProject, removeQueues, ROOT, spawnStack, waitForBridge } from './stack';

const configSchema = z.object({
  IDLE_S: int(30),
  BEFORE_S: int(10, 0),
  SETTLE_S: int(10, 0),
  ROUNDS: int(1),
  WORKERS: int(1),
  BUILD: z.stringbool().default(true),
  PROFILE: z.stringbool().default(false),
  DATABASE_URL: urlWith(['postgres:', 'postgresql:']).optional(),
  REDIS_URL: urlWith(['redis:', 'rediss:']).default('redis://127.0.0.1:6379'),
  KAFKA_BROKERS: z.string().default('127.0.0.1:9092'),
});

const GROUPS = ['web', 'worker', 'bridge', 'kafka', 'redis', 'postgres', 'bench', 'other'] as const;

/** Counts only the broker at `port` as kafka (another broker on this box is someone else's). */
function onlyBroker(base: Classifier, port: string): Classifier {
  return (pid, comm, cmdline) => {
    const group = base(pid, comm, cmdline);
    return group === 'kafka' && !cmdline().includes(`/${port}/server.properties`) ? null : group;
  };
}

function line(label: string, r: CpuReport): string {
  return `${label.padEnd(22)} ${GROUPS.map((g) => `${g} ${r.groupsPct[g].toFixed(1)}`).join('  ')}   (% of one core over ${(r.wallMs / 1000).toFixed(0)} s; machine ${r.machineBusyPct}% busy)`;
}

async function main(): Promise<number> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([, v]) => v !== undefined && v !== ''));
  const cfg = configSchema.parse(env);
  const startedAt = new Date();
  const tag = randomBytes(4).toString('hex');
  const brokers = cfg.KAFKA_BROKERS.split(',').map((b) => b.trim());
  const port = /:(\d+)$/.exec(brokers[0] ?? '')?.[1] ?? '9092';
  const stopHooks: (() => Promise<void>)[] = [];
  const stopAll = async () => {
    for (const hook of stopHooks.splice(0).reverse()) await hook().catch((e: Error) => note(`cleanup: ${e.message}`));
  };
  process.once('SIGINT', () => void stopAll().finally(() => process.exit(130)));
  try {
    const database = benchDatabase(cfg.DATABASE_URL, `idle_${tag}`, note);
    stopHooks.push(database.drop);
    const services = await ensureServices({
      databaseUrl: database.url,
      redisUrl: cfg.REDIS_URL,
      kafkaBrokers: brokers,
      log: consoleLogger,
    });
    stopHooks.push(() => services.stop());
    if (cfg.BUILD) await buildProject();
    process.stdout.write(
      `Idle cost: 1 web, ${cfg.WORKERS} worker(s), 1 bridge; ${cpus().length} CPUs, load average ${loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')}\n`,
    );

    let before: CpuReport | null = null;
    if (cfg.BEFORE_S > 0) {
      await sleep(cfg.SETTLE_S * 1000); // a broker just started is still warming up
      // Nobody's web or worker yet: other node processes on the box stay in "other".
      const end = startCpuPhase(onlyBroker(classifier({ web: [], workers: [] }), port));
      await sleep(cfg.BEFORE_S * 1000);
      before = end();
      process.stdout.write(`${line('before the stack', before)}\n`);
    }

    const queuePrefix = `bench-${tag}`;
    const groupId = `bench-bridge-${tag}`;
    const stack = await spawnStack({
      workers: cfg.WORKERS,
      databaseUrl: database.url,
      redisUrl: cfg.REDIS_URL,
      queuePrefix,
      bridge: true,
      profileDir: cfg.PROFILE ? path.join(ROOT, '.data', 'profiles') : undefined,
      env: {
        KAFKA_BROKERS: cfg.KAFKA_BROKERS,
        KAFKA_PAYMENTS_TOPIC: `payments.v1.bench-${tag}`,
        KAFKA_USER_EVENTS_TOPIC: `user-events.v1.bench-${tag}`,
        KAFKA_GROUP_ID: groupId,
      },
      log: note,
    });
    stopHooks.push(async () => {
      await stack.stop();
      await removeQueues(cfg.REDIS_URL, queuePrefix);
    });
    await waitForBridge(new Kafka({ clientId: 'coupon-bench', brokers, logLevel: logLevel.NOTHING }), groupId);
    note(`stack consuming; settling ${cfg.SETTLE_S} s, then ${cfg.ROUNDS} idle phase(s) of ${cfg.IDLE_S} s`);
    await sleep(cfg.SETTLE_S * 1000);

    const rounds: CpuReport[] = [];
    for (let i = 1; i <= cfg.ROUNDS; i += 1) {
      const end = startCpuPhase(onlyBroker(classifier(stack.pids), port));
      await sleep(cfg.IDLE_S * 1000);
      rounds.push(end());
      process.stdout.write(`${line(`idle ${i}/${cfg.ROUNDS}`, rounds.at(-1) as CpuReport)}\n`);
    }
    const med = Object.fromEntries(GROUPS.map((g) => [g, median(rounds.map((r) => r.groupsPct[g]))])) as Record<
      (typeof GROUPS)[number],
      number | null
    >;
    const stackPct = (med.web ?? 0) + (med.worker ?? 0) + (med.bridge ?? 0);
    const brokerAdded = before ? (med.kafka ?? 0) - before.groupsPct.kafka : null;
    const summary = [
      '',
      `Idle (median of ${rounds.length}): web ${med.web}%, workers ${med.worker}%, bridge ${med.bridge}% of a core (${stackPct.toFixed(1)}% together); broker ${med.kafka}%${brokerAdded === null ? '' : ` (${before?.groupsPct.kafka}% before the stack: ${brokerAdded.toFixed(1)}% added)`}, redis ${med.redis}%, postgres ${med.postgres}%`,
      `  bridge + the broker's added share: ${((med.bridge ?? 0) + (brokerAdded ?? med.kafka ?? 0)).toFixed(1)}% of a core`,
    ];
    const report = {
      bench: 'idle',
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      config: { ...cfg, DATABASE_URL: undefined },
      git: gitState(),
      machine: { cpus: cpus().length, loadavg: loadavg() },
      before,
      rounds,
      medians: med,
      brokerAdded,
      logProblems: stack.logProblems(),
    };
    summary.push(writeResults('idle', 'idle-latest.json', startedAt, report));
    process.stdout.write(`${summary.join('\n')}\n`);
    return 0;
  } finally {
    await stopAll();
  }
}

runBench(main);
