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
  const kafka = await startKafka(opts.kafka);
  buildIfStale([...procfile().values()]);
  const redis = await startOwnRedis();
  const db = await startScratchDatabase(tag);
  const names = worldNames(tag);
  await ensureTopics(kafka.brokers, [names.paymentsTopic, names.userEventsTopic], 6);
  const events = new EventProducer(kafka.brokers);
  const webPort = await freePorts(opts.formation.web);
  const databaseUrl = `postgres://postgres@127.0.0.1:${db.proxy.port}/${db.name}`;
  const env = serviceEnv(opts, { databaseUrl, redisUrl: redis.url, brokers: kafka.brokers, ...names });
  const processes = startProcesses(opts, env, webPort);
  const { supervisor } = processes;
  const baseUrls = Array.from({ length: opts.formation.web }, (_, i) => `http://127.0.0.1:${webPort + i}`);
  const apis = baseUrls.map((url) => new Api(url, 256));
  const world: World = {
    apis,
    pg: db.pg,
    queuePrefix: names.queuePrefix,
    paymentsTopic: names.paymentsTopic,
    userEventsTopic: names.userEventsTopic,
    events,
    redisUrl: redis.url,
    supervisor,
    signal: signaller(supervisor, log),
    restarts: () => supervisor.restartCounts(),
    redis: { kill: redis.kill, start: redis.start, proxy: redis.proxy },
    postgres: { proxy: db.proxy },
    consumed: consumedBy(kafka.brokers, names.groupId),
    restartKafka: kafka.restart,
    stop: async () => {
      await supervisor.stop();
      processes.closeLogs();
      await Promise.all(apis.map((a) => a.close()));
      await events.close();
      await db.pg.end();
      await redis.proxy.close();
      await db.proxy.close();
      await redis.stop();
      await kafka.stop();
      await db.drop();
    },
  };
  try {
    await waitReady(apis, processes.gaveUp);
  } catch (error) {
    await world.stop();
    throw error;
  }
  log(`world ${tag}: ${processes.names.join(', ')}; webs ${baseUrls.join(' ')}; redis ${redis.realUrl} via ${redis.url}`);
  return world;
}

interface WorldKafka {
  brokers: string[];
  restart: (downMs: number) => Promise<void>;
  stop: () => Promise<void>;
}

/** The shared broker of KAFKA_BROKERS, or (`own`) a broker of the world's own that a fault may restart. */
async function startKafka(which: WorldOptions['kafka']): Promise<WorldKafka> {
  if (which !== 'own') {
    return {
      brokers: (process.env.KAFKA_BROKERS || '127.0.0.1:9092').split(','),
      restart: () => Promise.reject(new Error('this world uses the shared Kafka broker; give it kafka: "own"')),
      stop: async () => undefined,
    };
  }
  const brokers = [`127.0.0.1:${await freePort()}`];
  let service = await ensureKafka(brokers, quiet);
  return {
    brokers,
    restart: async (downMs) => {
      await service.stop();
      await sleep(downMs);
      service = await ensureKafka(brokers, quiet);
    },
    stop: () => service.stop(),
  };
}

interface OwnRedis extends Pick<World['redis'], 'kill' | 'start' | 'proxy'> {
  /** The server itself. */
  realUrl: string;
  /** Through the proxy: what the service is given. */
  url: string;
  stop: () => Promise<void>;
}

/** A Redis of the world's own (append-only file, on a free port), behind a proxy. */
async function startOwnRedis(): Promise<OwnRedis> {
  const port = await freePort();
  const dir = path.join(repoRoot(), '.data', 'redis', String(port));
  rmSync(dir, { recursive: true, force: true });
  const realUrl = `redis://127.0.0.1:${port}`;
  let service = await ensureRedis(realUrl, quiet);
  const proxy = await startTcpProxy({ host: '127.0.0.1', port });
  return {
    realUrl,
    url: `redis://127.0.0.1:${proxy.port}`,
    proxy,
    kill: () => {
      if (service.pid !== undefined) process.kill(service.pid, 'SIGKILL');
    },
    start: async ({ empty = false } = {}) => {
      while (await ping(realUrl)) await sleep(50);
      if (empty) rmSync(dir, { recursive: true, force: true });
      service = await ensureRedis(realUrl, quiet);
    },
    stop: () => service.stop(),
  };
}

interface ScratchDatabase {
  name: string;
  /** Straight to Postgres, for the checker. */
  pg: Pool;
  /** In front of Postgres: the service's way to it. */
  proxy: TcpProxy;
  drop: () => Promise<void>;
}

/** A migrated database of the world's own on the test Postgres, and a proxy in front of Postgres. */
async function startScratchDatabase(tag: string): Promise<ScratchDatabase> {
  const admin = new Pool({ connectionString: 'postgres://postgres@127.0.0.1:5432/postgres', max: 1 });
  const name = `coupons_faults_${tag}`.replace(/[^a-z0-9_]/g, '_');
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${name}`);
  await runMigrations(`postgres://postgres@127.0.0.1:5432/${name}`);
  const proxy = await startTcpProxy({ host: '127.0.0.1', port: 5432 });
  const pg = new Pool({ connectionString: `postgres://postgres@127.0.0.1:5432/${name}`, max: 4 });
  return {
    name,
    pg,
    proxy,
    drop: async () => {
      await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => undefined);
      await admin.end();
    },
  };
}

/** The world's queue prefix, topics and consumer group, all named after its tag. */
function worldNames(tag: string) {
  return {
    queuePrefix: `faults-${tag}`,
    paymentsTopic: `payments.v1.faults-${tag}`,
    userEventsTopic: `user-events.v1.faults-${tag}`,
    groupId: `faults-bridge-${tag}`,
  };
}

/** The environment of every process of the world. */
function serviceEnv(
  opts: WorldOptions,
  world: ReturnType<typeof worldNames> & { databaseUrl: string; redisUrl: string; brokers: string[] },
): NodeJS.ProcessEnv {
  return {
    ...process.env,
    NODE_ENV: 'test',
    LOG_LEVEL: process.env.LOG_LEVEL || 'warn',
    DATABASE_URL: world.databaseUrl,
    REDIS_URL: world.redisUrl,
    QUEUE_PREFIX: world.queuePrefix,
    KAFKA_BROKERS: world.brokers.join(','),
    KAFKA_PAYMENTS_TOPIC: world.paymentsTopic,
    KAFKA_USER_EVENTS_TOPIC: world.userEventsTopic,
    KAFKA_GROUP_ID: world.groupId,
    RATE_LIMIT_IP_POINTS: '0',
    // Short lock periods, so a killed or stopped worker's jobs are taken over within seconds.
    JOB_LOCK_MS: '4000',
    JOB_STALLED_INTERVAL_MS: '1000',
    ADMISSION_RECONCILE_INTERVAL_MS: '1000',
    ADMISSION_RECONCILE_AGE_MS: '8000',
    ...opts.env,
  };
}

interface WorldProcesses {
  supervisor: Supervisor;
  /** web.1, worker.1, ... */
  names: string[];
  /** Why the supervisor gave up on a process, once it has. */
  gaveUp: () => string | undefined;
  closeLogs: () => void;
}

/** The Procfile's processes in the formation, under a supervisor, web N on port webPort + N - 1. */
function startProcesses(opts: WorldOptions, env: NodeJS.ProcessEnv, webPort: number): WorldProcesses {
  const { log } = opts;
  const logs = processLogs(opts.tag);
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
    output: (name, line) => logs.write(name, line),
  });
  supervisor.start();
  return { supervisor, names: instances.map((i) => i.name), gaveUp: () => gaveUp, closeLogs: logs.close };
}

/** One log file per process under .data/faults/logs/<tag>, opened at its first line. */
function processLogs(tag: string): { write: (name: string, line: string) => void; close: () => void } {
  const logDir = path.join(repoRoot(), '.data', 'faults', 'logs', tag);
  mkdirSync(logDir, { recursive: true });
  const logs = new Map<string, WriteStream>();
  const logFile = (name: string) => {
    let stream = logs.get(name);
    if (!stream) logs.set(name, (stream = createWriteStream(path.join(logDir, `${name}.log`), { flags: 'a' })));
    return stream;
  };
  return {
    write: (name, line) => logFile(name).write(`${line}\n`),
    close: () => {
      for (const stream of logs.values()) stream.end();
    },
  };
}

/** World.signal: sends a signal to a process of the supervisor's by name. */
function signaller(supervisor: Supervisor, log: (line: string) => void): World['signal'] {
  return async (name, signal) => {
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
  };
}

/** World.consumed: whether the consumer group has committed every message of a topic. */
function consumedBy(brokers: string[], groupId: string): World['consumed'] {
  return async (topic) => {
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
  };
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
