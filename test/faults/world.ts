// The world the fault suite breaks: the service as `npm start` runs it (the Procfile's processes
// under the supervisor, which restarts what dies), a Redis of its own (append-only file, so it can be
// killed and restarted with or without its data), and a TCP proxy in front of Redis and of Postgres
// (to make either unreachable, or Postgres slow, or to cut every connection as a restart does).
import { createWriteStream, mkdirSync, rmSync, type WriteStream } from 'node:fs';
import path from 'node:path';
import { Kafka, logLevel } from 'kafkajs';
import { Pool } from 'pg';
import { runMigrations } from '../../src/storage/migrator';
import { ensureKafka, ensureTopics } from '../../scripts/infra/kafka';
import { freePort, isPortFree, repoRoot, sleep, type Logger } from '../../scripts/infra/process';
import { ensureRedis, ping } from '../../scripts/infra/redis';
import { planInstances } from '../../scripts/supervisor/formation';
import { Supervisor } from '../../scripts/supervisor/supervisor';
import { buildIfStale, procfile } from '../support/build';
import { EventProducer } from '../support/checkout';
import { Api } from '../support/http';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy';

export interface Formation {
  web: number;
  worker: number;
  bridge: number;
}

export interface World {
  apis: Api[];
  pg: Pool;
  queuePrefix: string;
  paymentsTopic: string;
  userEventsTopic: string;
  events: EventProducer;
  /** The Redis the service uses, through the proxy (for reading queue state). */
  redisUrl: string;
  supervisor: Supervisor;
  /** Sends `signal` to the named process (web.1, worker.2, bridge.1); its pid. */
  signal(name: string, signal: NodeJS.Signals): Promise<number>;
  /** The supervisor's restarts so far, per process. */
  restarts(): string;
  redis: {
    /** SIGKILL: what the append-only file had not synced (up to a second) is lost. */
    kill(): void;
    /** Starts it again on the same port, with its data or (`empty`) without. */
    start(opts?: { empty?: boolean }): Promise<void>;
    proxy: TcpProxy;
  };
  postgres: { proxy: TcpProxy };
  /** Whether the bridge committed every message of `topic` so far (its group's offsets at the end). */
  consumed(topic: string): Promise<boolean>;
  /** Restarts the world's own Kafka broker (only with `kafka: 'own'`), keeping its data. */
  restartKafka(downMs: number): Promise<void>;
  stop(): Promise<void>;
}

const quiet: Logger = { info: () => undefined, warn: (m) => process.stderr.write(`[faults] ${m}\n`) };

export interface WorldOptions {
  formation: Formation;
  tag: string;
  log: (line: string) => void;
  env?: Record<string, string>;
  /** `own`: a Kafka broker of this world's own (a fault restarts it); default the shared KAFKA_BROKERS. */
  kafka?: 'shared' | 'own';
}

export async function createWorld(opts: WorldOptions): Promise<World> {
  const { tag, log } = opts;
  let kafkaService: Awaited<ReturnType<typeof ensureKafka>> | undefined;
  let brokers = (process.env.KAFKA_BROKERS || '127.0.0.1:9092').split(',');
  if (opts.kafka === 'own') {
    brokers = [`127.0.0.1:${await freePort()}`];
    kafkaService = await ensureKafka(brokers, quiet);
  }
  buildIfStale([...procfile().values()]);

  // Redis of its own, behind a proxy.
  const redisPort = await freePort();
  const redisDir = path.join(repoRoot(), '.data', 'redis', String(redisPort));
  rmSync(redisDir, { recursive: true, force: true });
  const realRedisUrl = `redis://127.0.0.1:${redisPort}`;
  let redisService = await ensureRedis(realRedisUrl, quiet);
  const redisProxy = await startTcpProxy({ host: '127.0.0.1', port: redisPort });
  const redisUrl = `redis://127.0.0.1:${redisProxy.port}`;

  // A scratch database of its own, behind a proxy.
  const admin = new Pool({ connectionString: 'postgres://postgres@127.0.0.1:5432/postgres', max: 1 });
  const database = `coupons_faults_${tag}`.replace(/[^a-z0-9_]/g, '_');
  await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${database}`);
  await runMigrations(`postgres://postgres@127.0.0.1:5432/${database}`);
  const pgProxy = await startTcpProxy({ host: '127.0.0.1', port: 5432 });
  const pg = new Pool({ connectionString: `postgres://postgres@127.0.0.1:5432/${database}`, max: 4 });

  const queuePrefix = `faults-${tag}`;
  const paymentsTopic = `payments.v1.faults-${tag}`;
  const userEventsTopic = `user-events.v1.faults-${tag}`;
  const groupId = `faults-bridge-${tag}`;
  await ensureTopics(brokers, [paymentsTopic, userEventsTopic], 6);
  const events = new EventProducer(brokers);
  const webPort = await freePorts(opts.formation.web);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    NODE_ENV: 'test',
    LOG_LEVEL: process.env.LOG_LEVEL || 'warn',
    DATABASE_URL: `postgres://postgres@127.0.0.1:${pgProxy.port}/${database}`,
    REDIS_URL: redisUrl,
    QUEUE_PREFIX: queuePrefix,
    KAFKA_BROKERS: brokers.join(','),
    KAFKA_PAYMENTS_TOPIC: paymentsTopic,
    KAFKA_USER_EVENTS_TOPIC: userEventsTopic,
    KAFKA_GROUP_ID: groupId,
    RATE_LIMIT_IP_POINTS: '0',
    // Short lock periods, so a killed or stopped worker's jobs are taken over within seconds.
    JOB_LOCK_MS: '4000',
    JOB_STALLED_INTERVAL_MS: '1000',
    ADMISSION_RECONCILE_INTERVAL_MS: '1000',
    ADMISSION_RECONCILE_AGE_MS: '8000',
    ...opts.env,
  };
  const logDir = path.join(repoRoot(), '.data', 'faults', 'logs', tag);
  mkdirSync(logDir, { recursive: true });
  const logs = new Map<string, WriteStream>();
  const logFile = (name: string) => {
    let stream = logs.get(name);
    if (!stream) logs.set(name, (stream = createWriteStream(path.join(logDir, `${name}.log`), { flags: 'a' })));
    return stream;
  };
  const instances = planInstances([...procfile().entries()], { ...opts.formation }, { web: webPort, worker: 0, bridge: 0 });
  let gaveUp: string | undefined;
  const supervisor = new Supervisor(instances, {
    cwd: repoRoot(),
    env,
    log: { info: () => undefined, warn: (m) => log(m) },
    stopGraceMs: 15_000,
    onGiveUp: (message) => {
      gaveUp = message;
      log(`supervisor gave up: ${message}`);
    },
    // Each process's output in a file of its own, for when a scenario fails.
    output: (name, line) => logFile(name).write(`${line}\n`),
  });
  supervisor.start();
  const baseUrls = Array.from({ length: opts.formation.web }, (_, i) => `http://127.0.0.1:${webPort + i}`);
  const apis = baseUrls.map((url) => new Api(url, 256));
  const world: World = {
    apis,
    pg,
    queuePrefix,
    paymentsTopic,
    userEventsTopic,
    events,
    redisUrl,
    supervisor,
    signal: async (name, signal) => {
      // A process between a crash and its restart (or one that has not come up yet) is waited for,
      // and the wait is said: a process that died on its own is a finding of its own.
      const until = Date.now() + 30_000;
      let pid = supervisor.pidOf(name);
      if (pid === undefined) log(`${name} is not running (restarts: ${supervisor.restartCounts()}); waiting for it`);
      while (pid === undefined) {
        if (Date.now() > until) throw new Error(`${name} is not running (restarts: ${supervisor.restartCounts()})`);
        await sleep(50);
        pid = supervisor.pidOf(name);
      }
      process.kill(pid, signal);
      return pid;
    },
    restarts: () => supervisor.restartCounts(),
    redis: {
      kill: () => {
        if (redisService.pid !== undefined) process.kill(redisService.pid, 'SIGKILL');
      },
      start: async ({ empty = false } = {}) => {
        while (await ping(realRedisUrl)) await sleep(50);
        if (empty) rmSync(redisDir, { recursive: true, force: true });
        redisService = await ensureRedis(realRedisUrl, quiet);
      },
      proxy: redisProxy,
    },
    postgres: { proxy: pgProxy },
    consumed: async (topic) => {
      const admin = new Kafka({ clientId: 'faults-admin', brokers, logLevel: logLevel.NOTHING }).admin();
      await admin.connect();
      try {
        const ends = await admin.fetchTopicOffsets(topic);
        const [committed] = await admin.fetchOffsets({ groupId, topics: [topic] });
        const at = new Map((committed?.partitions ?? []).map((p) => [p.partition, Number(p.offset)]));
        return ends.every((e) => Number(e.high) === 0 || at.get(e.partition) === Number(e.high));
      } catch {
        return false;
      } finally {
        await admin.disconnect();
      }
    },
    restartKafka: async (downMs) => {
      if (!kafkaService) throw new Error('this world uses the shared Kafka broker; give it kafka: "own"');
      await kafkaService.stop();
      await sleep(downMs);
      kafkaService = await ensureKafka(brokers, quiet);
    },
    stop: async () => {
      await supervisor.stop();
      for (const stream of logs.values()) stream.end();
      await Promise.all(apis.map((a) => a.close()));
      await events.close();
      await pg.end();
      await redisProxy.close();
      await pgProxy.close();
      await redisService.stop();
      await kafkaService?.stop();
      await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).catch(() => undefined);
      await admin.end();
    },
  };
  try {
    await waitReady(apis, () => gaveUp);
  } catch (error) {
    await world.stop();
    throw error;
  }
  log(`world ${tag}: ${instances.map((i) => i.name).join(', ')}; webs ${baseUrls.join(' ')}; redis ${realRedisUrl} via ${redisUrl}`);
  return world;
}

/** The first of `count` consecutive free ports (the supervisor gives web N the port PORT + N - 1). */
async function freePorts(count: number): Promise<number> {
  for (;;) {
    const first = await freePort();
    const rest = await Promise.all(Array.from({ length: count - 1 }, (_, i) => isPortFree('127.0.0.1', first + i + 1)));
    if (rest.every(Boolean)) return first;
  }
}

/** Every web answers /health/ready (and so has its Redis and Postgres); fails if the supervisor gave up. */
async function waitReady(apis: Api[], gaveUp: () => string | undefined): Promise<void> {
  const deadline = Date.now() + 90_000;
  for (const api of apis) {
    for (;;) {
      const failed = gaveUp();
      if (failed) throw new Error(failed);
      const ready = await api.get('/health/ready').then(
        (r) => r.status === 200,
        () => false,
      );
      if (ready) break;
      if (Date.now() > deadline) throw new Error(`${api.baseUrl} not ready within 90 s`);
      await sleep(200);
    }
  }
}
